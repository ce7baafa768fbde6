/* The cullbench floor: unlink(2) every path read from stdin (one per line), in order, and
 * nothing else: no scan, no device, no process per file. Exit status 1 if any unlink failed.
 * Built by run-suite.sh for the scenarios that need the C daemon (cullbench). */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void)
{
	char path[4096];
	int failed = 0;

	while (fgets(path, sizeof(path), stdin)) {
		path[strcspn(path, "\n")] = '\0';
		if (unlink(path) != 0) {
			perror(path);
			failed = 1;
		}
	}
	return failed;
}
