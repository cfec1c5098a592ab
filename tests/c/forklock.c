/* fork while another thread is inside an emulated call: the child must not inherit a held lock.
 * A thread maps 1 GiB (pinning takes a while); once pinning is under way (VmPin rising) the main
 * thread forks. The child closes its copy of the container, opens and dup2s /dev/null, and
 * exits (running the library's exit-time release): it must finish, within an alarm. */
#define _GNU_SOURCE
#include "common.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>

static int c;
static void *mem;
static const size_t len = 1ul << 30;

static long vmpin(void) { return status_kb("VmPin"); }

static void *mapper(void *arg) {
    (void)arg;
    CHECK(dma_map(c, mem, 0x100000000ull, len) == 0, "MAP_DMA 1 GiB");
    return NULL;
}

int main(void) {
    int g;
    c = open_container(1, &g);
    mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED, "mmap");
    CHECK(madvise(mem, len, MADV_NOHUGEPAGE) == 0, "4 KiB pages: pinning takes a while");
    memset(mem, 1, len); /* faulted in: the map's time is the pinning, under the lock */
    long base = vmpin();
    pthread_t t;
    CHECK(pthread_create(&t, NULL, mapper, NULL) == 0, "thread");
    while (vmpin() <= base + 4096) {
    }
    pid_t child = fork();
    CHECK(child >= 0, "fork");
    if (child == 0) {
        alarm(30);
        close(c);
        int fd = open("/dev/null", O_RDWR);
        if (fd < 0 || dup2(fd, 100) != 100) _exit(2);
        close(fd);
        exit(0); /* runs the library's release at exit */
    }
    int ws;
    CHECK(waitpid(child, &ws, 0) == child, "waitpid");
    CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0,
          "child %s %d (SIGALRM: it hung on a lock)", WIFSIGNALED(ws) ? "killed by signal" : "exit",
          WIFSIGNALED(ws) ? WTERMSIG(ws) : WEXITSTATUS(ws));
    pthread_join(t, NULL);
    printf("forklock ok\n");
    return 0;
}
