/* One thread opens a group, puts it in a container and closes it; once that close has
 * returned, another thread opens the group: the release is complete when close returns, so
 * the new open never finds the group busy or still in the container. 500 rounds. */
#include "common.h"
#include <pthread.h>

static int c;
static int done[2], next[2];

static void *closer(void *arg) {
    (void)arg;
    for (int i = 0; i < 500; i++) {
        int g = open("/dev/vfio/1", O_RDWR);
        CHECK(g >= 0, "open in the closing thread, round %d", i);
        CHECK(ioctl(g, VFIO_GROUP_SET_CONTAINER, &c) == 0, "SET_CONTAINER");
        CHECK(close(g) == 0, "close");
        char x = 1;
        CHECK(write(done[1], &x, 1) == 1 && read(next[0], &x, 1) == 1, "handshake");
    }
    return NULL;
}

int main(void) {
    c = open("/dev/vfio/vfio", O_RDWR);
    CHECK(c >= 0 && pipe(done) == 0 && pipe(next) == 0, "setup");
    pthread_t t;
    CHECK(pthread_create(&t, NULL, closer, NULL) == 0, "thread");
    for (int i = 0; i < 500; i++) {
        char x;
        CHECK(read(done[0], &x, 1) == 1, "handshake");
        int g = open("/dev/vfio/1", O_RDWR);
        CHECK(g >= 0, "open right after the other thread's close returned, round %d", i);
        struct vfio_group_status st = { .argsz = sizeof st };
        CHECK(ioctl(g, VFIO_GROUP_GET_STATUS, &st) == 0, "GET_STATUS");
        CHECK(!(st.flags & VFIO_GROUP_FLAGS_CONTAINER_SET), "round %d: no container left", i);
        CHECK(close(g) == 0 && write(next[1], &x, 1) == 1, "close, handshake");
    }
    pthread_join(t, NULL);
    close(c);
    printf("reopen ok\n");
    return 0;
}
