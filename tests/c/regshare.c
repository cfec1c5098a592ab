/* The device's registers are one set, as on hardware, however they are reached: values a
 * process writes to plain registers (answered in the process, from the shared register image)
 * are what another process reads, and what the device uses when it is started from a third
 * route (a forked child's START); a thread that polls STATUS while another runs transfers
 * only ever sees whole states, and DONE only once the bytes have landed. */
#define _GNU_SOURCE
#include "device.h"
#include <pthread.h>
#include <sys/wait.h>

static unsigned char *mem;
static volatile int stop;
static long bad_status, polls;

static void *poller(void *arg) {
    (void)arg;
    while (!stop) {
        uint32_t st = rd32(REG_STATUS);
        if (st & ~(STATUS_BUSY | STATUS_DONE | STATUS_FAULT)) bad_status++;
        polls++;
    }
    return NULL;
}

int main(void) {
    int g;
    int c = open_container(1, &g);
    open_device(g);
    mem = map_anon(4096);
    CHECK(dma_map(c, mem, 0x100000, 4096) == 0, "MAP_DMA");

    /* Parent programs a transfer; a forked child (another process, its own connection)
     * sees the values and starts it. */
    unsigned char pat[256];
    for (int i = 0; i < 256; i++) pat[i] = (unsigned char)(i ^ 0x5a);
    CHECK(pwrite(dev, pat, sizeof pat, bar0 + BUFFER) == (ssize_t)sizeof pat, "fill buffer");
    wr32(REG_STATUS, STATUS_DONE | STATUS_FAULT);
    wr64(REG_DMA_SRC, 0);
    wr64(REG_DMA_DST, 0x100000);
    wr64(REG_DMA_LEN, sizeof pat);
    wr32(REG_LIVENESS, 0x1234);
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        CHECK(rd64(REG_DMA_DST) == 0x100000, "child sees DMA_DST");
        CHECK(rd64(REG_DMA_LEN) == sizeof pat, "child sees DMA_LEN");
        CHECK(rd32(REG_LIVENESS) == ~0x1234u, "child sees LIVENESS");
        wr32(REG_CMD, CMD_START | CMD_TO_MEMORY);
        CHECK(rd32(REG_STATUS) == STATUS_DONE, "child: DONE");
        wr32(REG_LIVENESS, 0x4321);
        _exit(0);
    }
    int st;
    CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child ok");
    CHECK(rd32(REG_STATUS) == STATUS_DONE, "parent sees the child's transfer DONE");
    CHECK(rd32(REG_LIVENESS) == ~0x4321u, "parent sees the child's LIVENESS");
    CHECK(memcmp(mem, pat, sizeof pat) == 0, "the child's transfer moved the parent's buffer");

    /* Transfers in one thread, STATUS polled in another. */
    pthread_t t;
    CHECK(pthread_create(&t, NULL, poller, NULL) == 0, "thread");
    for (int i = 0; i < 300; i++) {
        memset(mem, 0, sizeof pat);
        CHECK(dma(0, 0x100000, sizeof pat, CMD_TO_MEMORY) == STATUS_DONE, "transfer %d", i);
        CHECK(memcmp(mem, pat, sizeof pat) == 0, "transfer %d landed before DONE", i);
    }
    stop = 1;
    pthread_join(t, NULL);
    CHECK(bad_status == 0, "%ld torn STATUS reads of %ld", bad_status, polls);
    close(dev);
    close(g);
    close(c);
    printf("regshare ok (%ld polls)\n", polls);
    return 0;
}
