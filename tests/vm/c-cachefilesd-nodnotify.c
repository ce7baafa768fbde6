/* LD_PRELOAD shim for the benchmark of Debian's C cachefilesd (scenarios/cullbench.sh).
 *
 * The C daemon arms a dnotify watch on its graveyard (fcntl F_NOTIFY, DN_CREATE) every time it
 * reaps it, and exits ("unable to set notification on graveyard: errno 22") if that fails. The
 * test kernel is built without CONFIG_DNOTIFY, so it always fails there. This shim makes an
 * F_NOTIFY that the kernel refuses with EINVAL report success instead (and says so once on
 * stderr); everything else goes to the real fcntl. The only loss: the daemon is not woken when
 * the kernel buries something in the graveyard. Culling a plain object unlinks it directly, so
 * the benchmark never uses the graveyard.
 *
 *   cc -shared -fPIC -O2 -o cachefilesd-c-nodnotify.so c-cachefilesd-nodnotify.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>

int fcntl(int fd, int cmd, ...)
{
	static int (*real)(int, int, ...);
	static int warned;
	va_list ap;
	long arg;
	int ret;

	va_start(ap, cmd);
	arg = va_arg(ap, long); /* every fcntl argument fits in a long on x86-64 */
	va_end(ap);
	if (!real)
		real = (int (*)(int, int, ...))dlsym(RTLD_NEXT, "fcntl");
	ret = real(fd, cmd, arg);
	if (ret < 0 && cmd == F_NOTIFY && errno == EINVAL) {
		if (!warned++)
			fprintf(stderr, "nodnotify shim: kernel has no dnotify; F_NOTIFY on fd %d ignored\n", fd);
		return 0;
	}
	return ret;
}
