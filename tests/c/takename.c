/* Tries to take the broker's name of this run (@type1-broker/<uid>/$TYPE1_BROKER) after the
 * broker has had time to go idle, as another process of the same user could: prints "held"
 * when the name is taken by the run's broker, "free" when this process could bind it. */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(void) {
    const char *name = getenv("TYPE1_BROKER");
    if (!name) { printf("no TYPE1_BROKER\n"); return 1; }
    sleep(2); /* a broker with nothing to do exits after one second */
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    int n = snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "type1-broker/%u/%s", getuid(), name);
    int s = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (s < 0) { perror("socket"); return 1; }
    int r = bind(s, (struct sockaddr *)&a, offsetof(struct sockaddr_un, sun_path) + 1 + n);
    printf(r == 0 ? "free\n" : "held\n");
    return 0;
}
