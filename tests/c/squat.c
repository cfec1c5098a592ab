/* Another local user squatting the broker's abstract name (issue 14): drops to uid 65534
 * (nobody), listens on "@type1-broker/<uid argv[1]>/<name argv[2]>", prints "ready" and
 * accepts connections until killed. A client of the emulation must refuse such a broker. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    if (setgid(65534) != 0 || setuid(65534) != 0) { perror("setuid"); return 3; }
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    int n = snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "type1-broker/%s/%s", argv[1], argv[2]);
    int s = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (bind(s, (struct sockaddr *)&a, sizeof(sa_family_t) + 1 + n) != 0 || listen(s, 8) != 0) {
        perror("bind");
        return 4;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c >= 0) close(c);
    }
}
