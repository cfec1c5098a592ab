/* Several processes and threads share one container and device (issue 9 item 8): four forked
 * children, each with a second thread, and the parent with one, map and unmap their own memory
 * at IOVAs of their own, 20 times each, while the parent drives the device's DMA through its
 * mapping and checks the bytes. At the end every pin is gone (VmPin back where it started). */
#define _GNU_SOURCE
#include "common.h"
#include "device.h"
#include <sys/wait.h>
#include <pthread.h>
#define PG 4096
static int c, g;
static void work(int id) {
    unsigned char *buf = map_anon(4 * PG);
    uint64_t iova = 0x1000000 + (uint64_t)id * 0x100000;
    for (int i = 0; i < 20; i++) {
        memset(buf, id + i, 4 * PG);
        CHECK(dma_map(c, buf, iova, 4 * PG) == 0, "map %d", id);
        if (id == 50) { /* one driver of the device's registers, as on hardware */
            uint32_t st = dma(iova, 0, 64, 0);
            CHECK(st == STATUS_DONE, "dma st %x", st);
            unsigned char got[64];
            CHECK(pread(dev, got, 64, bar0 + BUFFER) == 64 && got[0] == (unsigned char)(id + i), "dma data");
        }
        uint64_t un; CHECK(dma_unmap(c, iova, 4 * PG, &un) == 0 && un == 4 * PG, "unmap %d", id);
    }
}
static void *thr(void *a) { work((int)(long)a); return NULL; }
int main(void) {
    alarm(120);
    long base = status_kb("VmPin");
    c = open_container(1, &g);
    open_device(g);
    pid_t kids[4];
    for (int k = 0; k < 4; k++) {
        fflush(stdout);
        kids[k] = fork();
        if (kids[k] == 0) {
            pthread_t t; pthread_create(&t, NULL, thr, (void *)(long)(10 + k));
            work(k); pthread_join(t, NULL); _exit(0);
        }
    }
    pthread_t t; pthread_create(&t, NULL, thr, (void *)99L);
    work(50);
    pthread_join(t, NULL);
    for (int k = 0; k < 4; k++) { int ws; CHECK(waitpid(kids[k], &ws, 0) == kids[k] && WIFEXITED(ws) && !WEXITSTATUS(ws), "kid %d ws %x", k, ws); }
    close(dev); close(g); close(c);
    CHECK(status_kb("VmPin") == base, "VmPin %ld vs %ld", status_kb("VmPin"), base);
    printf("mp ok\n");
    return 0;
}
