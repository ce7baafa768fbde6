// SPDX-License-Identifier: Apache-2.0 OR MIT
// erofs-filemount FILE DIR: a plain file-backed EROFS mount (Linux 6.12+), read-only, with
// mount(2) on the image file itself. busybox's mount sets up a loop device for every regular
// file, so the guest has no other way to make the baseline fanotify-bench.sh compares with.
#include <stdio.h>
#include <sys/mount.h>

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: erofs-filemount FILE DIR\n");
    return 2;
  }
  if (mount(argv[1], argv[2], "erofs", MS_RDONLY, NULL) != 0) {
    perror("mount");
    return 1;
  }
  return 0;
}
