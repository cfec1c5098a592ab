/* Threads and forks hammering the emulation at once (issue 9 item 8): six threads each open,
 * dup and close 40 containers; one of them also takes group 1 (or gets EBUSY while another
 * holds it) and maps and unmaps through it; meanwhile the main thread forks children that open
 * a container of their own. Five rounds. Every answer must be the kernel's: no EBADF on a
 * fresh fd (a broker once matched a hang-up to a reused fd number and released the wrong
 * container), no hang in a child forked while a thread was inside the emulation. */
#define _GNU_SOURCE
#include "common.h"
#include <pthread.h>
#include <sys/wait.h>
#include <signal.h>
static void *worker(void *arg) {
    long id = (long)arg;
    void *buf = map_anon(8 * 4096);
    for (int i = 0; i < 40; i++) {
        int c = open("/dev/vfio/vfio", O_RDWR);
        CHECK(c >= 0, "open container");
        CHECK(ioctl(c, VFIO_GET_API_VERSION) == VFIO_API_VERSION, "api");
        if (id == 0 && i % 2 == 0) {
            int g = open("/dev/vfio/1", O_RDWR);
            if (g >= 0) {
                CHECK(ioctl(g, VFIO_GROUP_SET_CONTAINER, &c) == 0, "set container");
                CHECK(ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) == 0, "set iommu");
                CHECK(dma_map(c, buf, 0x100000, 8 * 4096) == 0, "map");
                uint64_t un; CHECK(dma_unmap(c, 0x100000, 8 * 4096, &un) == 0 && un == 8 * 4096, "unmap");
                close(g);
            } else CHECK(errno == EBUSY, "group open: %d", errno);
        }
        int d = dup(c);
        close(c);
        close(d);
    }
    return NULL;
}
int main(void) {
    alarm(120);
    for (int round = 0; round < 5; round++) {
        pthread_t t[6];
        for (long i = 0; i < 6; i++) pthread_create(&t[i], NULL, worker, (void *)i);
        for (int k = 0; k < 4; k++) {
            fflush(stdout);
            pid_t p = fork();
            if (p == 0) {
                int c = open("/dev/vfio/vfio", O_RDWR);
                CHECK(c >= 0, "child open");
                CHECK(ioctl(c, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) == 1, "child ext");
                _exit(0);
            }
            int ws; CHECK(waitpid(p, &ws, 0) == p && WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "child status %d", ws);
        }
        for (int i = 0; i < 6; i++) pthread_join(t[i], NULL);
    }
    printf("stress ok\n");
    return 0;
}
