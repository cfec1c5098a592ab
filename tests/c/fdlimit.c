/* At RLIMIT_NOFILE, opening one more container or getting one more device fd fails with
 * EMFILE, as in the kernel (never EIO), and works again once an fd is closed. */
#include "common.h"
#include <sys/resource.h>

int main(void) {
    struct rlimit rl = { 64, 64 };
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit");
    int fds[128], n = 0;
    for (;;) {
        int c = open("/dev/vfio/vfio", O_RDWR);
        if (c < 0) {
            CHECK(errno == EMFILE, "open container %d: want EMFILE", n);
            break;
        }
        CHECK(n < 128, "the limit holds");
        fds[n++] = c;
    }
    CHECK(n > 10, "opened %d containers", n);
    close(fds[--n]);
    int c = open("/dev/vfio/vfio", O_RDWR);
    CHECK(c >= 0, "open after a close");
    CHECK(ioctl(c, VFIO_GET_API_VERSION) == VFIO_API_VERSION, "the new container works");
    fds[n++] = c;
    /* A device fd at the limit. */
    close(fds[--n]);
    close(fds[--n]);
    int g;
    int c2 = open_container(1, &g); /* takes the two free slots */
    errno = 0;
    int dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, "0000:00:05.0");
    CHECK(dev == -1 && errno == EMFILE, "GET_DEVICE_FD at the limit: EMFILE (got %d)", dev);
    close(fds[--n]);
    dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, "0000:00:05.0");
    CHECK(dev >= 0, "GET_DEVICE_FD after a close");
    close(dev);
    close(g);
    close(c2);
    while (n > 0) close(fds[--n]);
    printf("fdlimit ok\n");
    return 0;
}
