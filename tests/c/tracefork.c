/* The trace across fork and exec: the parent maps, forks a child that maps too and exits, then
 * execs itself ("again"), which maps again. The test (c_programs.rs) checks the files: one per
 * process, every line valid JSON with its writer's pid, seq 1, 2, 3, ... in each, and the
 * parent's events from before its exec still there. */
#define _GNU_SOURCE
#include "common.h"
#include <sys/wait.h>

static void map_some(int c, uint64_t iova) {
    void *p = map_anon(4 * 4096);
    CHECK(dma_map(c, p, iova, 4 * 4096) == 0, "MAP_DMA");
}

int main(int argc, char **argv) {
    int g;
    int c = open_container(1, &g);
    if (argc > 1 && !strcmp(argv[1], "again")) {
        map_some(c, 0x300000);
        printf("tracefork again %d\n", (int)getpid());
        return 0;
    }
    map_some(c, 0x100000);
    pid_t child = fork();
    CHECK(child >= 0, "fork");
    if (child == 0) {
        uint64_t un;
        CHECK(dma_unmap(c, 0x100000, 4 * 4096, &un) == 0, "child UNMAP");
        printf("tracefork child %d\n", (int)getpid());
        exit(0);
    }
    int ws;
    CHECK(waitpid(child, &ws, 0) == child && WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "child");
    printf("tracefork parent %d\n", (int)getpid());
    fflush(stdout);
    close(g);
    close(c);
    execl("/proc/self/exe", argv[0], "again", (char *)NULL);
    CHECK(0, "exec");
}
