/* Containers, groups and devices shared across processes, as the kernel shares them. In the
 * kernel an fd of /dev/vfio is a reference to one kernel object: fork, exec (without
 * close-on-exec) and SCM_RIGHTS give another process the same container, group or device; a
 * group is open through one file at a time (another open, in any process, is EBUSY) and opens
 * again as soon as its last fd is closed, wherever that was; a mapping pins pages of the
 * process that made it and the device's DMA reaches exactly those pages, whoever starts it;
 * and everything is released at the last close, in whatever process. Cases, in order:
 *   fork     a child's MAP_DMA lands in the parent's container: the parent's MAP of the same
 *            IOVA is EEXIST and its UNMAP removes the child's 4 pages.
 *   busy     group 1 held by the parent is EBUSY in a child; a close in one process lets
 *            another open at once (both ways, and when the holder is a child that exited).
 *   scm      a container fd received over SCM_RIGHTS (no inherited reference) is the
 *            sender's container: the child's mapping is EEXIST for the parent.
 *   exec     a container fd without FD_CLOEXEC survives exec ("exec-child" mode: it maps and
 *            unmaps through it) and the group held by the parent is EBUSY in the new image.
 *   dma      a child drives the device (inherited fd) to read the parent's mapped pages (not
 *            the child's own, different, copy) and to write into them.
 *   outlive  a child that maps its page and exits (the parent still holds the container) leaves
 *            that page pinned: the device still reads and writes it, and the parent's UNMAP
 *            removes it. The same across exec ("cpr-child" mode, QEMU's live update): the
 *            pages mapped before exec stay the device's after it.
 *   release  the parent's pins (VmPin) stay while a child still holds the container and group,
 *            and are back to their start once that child, the last holder, exits.
 * Prints "<case> ok" per case and "share ok" at the end. Every wait has an alarm.
 * argv: none, "exec-child FD" (the exec'd side of the exec case) or "cpr-child C DEV" (of the
 * outlive case). */
#define _GNU_SOURCE
#include "common.h"
#include "device.h"
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define PG 4096

/* This process's ends of the two pipes between a parent and the child of spawn(). */
static int rd_fd = -1, wr_fd = -1;

static void say(void) {
    char b = 1;
    CHECK(write(wr_fd, &b, 1) == 1, "pipe write: the other process went away");
}

static void hear(void) {
    char b;
    CHECK(read(rd_fd, &b, 1) == 1, "pipe read: the other process went away");
}

/* fork, with a pipe each way between parent and child (close-on-exec). */
static pid_t spawn(void) {
    int up[2], down[2];
    CHECK(pipe2(up, O_CLOEXEC) == 0 && pipe2(down, O_CLOEXEC) == 0, "pipe2");
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        alarm(30);
        close(up[0]);
        close(down[1]);
        rd_fd = down[0];
        wr_fd = up[1];
    } else {
        close(up[1]);
        close(down[0]);
        rd_fd = up[0];
        wr_fd = down[1];
    }
    return pid;
}

/* Waits for the child of spawn(), which must exit 0 (a failing child printed why). */
static void reap(pid_t pid, const char *what) {
    int ws;
    CHECK(waitpid(pid, &ws, 0) == pid, "waitpid (%s)", what);
    CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "%s child: %s %d (SIGALRM 14: it hung)", what,
          WIFSIGNALED(ws) ? "killed by signal" : "exit", WIFSIGNALED(ws) ? WTERMSIG(ws) : WEXITSTATUS(ws));
    close(rd_fd);
    close(wr_fd);
    rd_fd = wr_fd = -1;
}

static void expect_busy(const char *who) {
    errno = 0;
    int fd = open("/dev/vfio/1", O_RDWR);
    CHECK(fd == -1 && errno == EBUSY, "%s: open /dev/vfio/1 held elsewhere: want EBUSY, got fd %d", who, fd);
}

/* Index of the first byte of p[0..n) that is not v, or -1. */
static long first_not(const unsigned char *p, size_t n, unsigned char v) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != v) return (long)i;
    return -1;
}

static void send_fd(int sock, int fd) {
    char byte = 'c';
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } ctl;
    struct iovec io = { .iov_base = &byte, .iov_len = 1 };
    struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf };
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    CHECK(sendmsg(sock, &m, 0) == 1, "sendmsg SCM_RIGHTS");
}

static int recv_fd(int sock) {
    char byte;
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } ctl;
    struct iovec io = { .iov_base = &byte, .iov_len = 1 };
    struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf };
    CHECK(recvmsg(sock, &m, 0) == 1, "recvmsg");
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    CHECK(cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS, "no fd in the message");
    int fd;
    memcpy(&fd, CMSG_DATA(cm), sizeof fd);
    return fd;
}

/* The parent finds the child's mapping of 4 pages at `iova` in container c, and removes it. */
static void parent_sees_child_map(int c, uint64_t iova, const char *what) {
    void *q = map_anon(4 * PG);
    errno = 0;
    CHECK(dma_map(c, q, iova, 4 * PG) == -1 && errno == EEXIST,
          "%s: the parent's MAP over the child's mapping must be EEXIST (one container)", what);
    uint64_t un = 0;
    CHECK(dma_unmap(c, iova, 4 * PG, &un) == 0 && un == 4 * PG,
          "%s: the parent's UNMAP of the child's mapping: unmapped %llu, want %d", what, (unsigned long long)un, 4 * PG);
    munmap(q, 4 * PG);
}

/* 1. fork shares the container. */
static void case_fork(int c) {
    pid_t pid = spawn();
    if (pid == 0) {
        void *p = map_anon(4 * PG);
        CHECK(dma_map(c, p, 0x100000, 4 * PG) == 0, "child MAP_DMA through the inherited container");
        say();
        hear();
        exit(0); /* without UNMAP: the parent removed it */
    }
    hear();
    parent_sees_child_map(c, 0x100000, "fork");
    say();
    reap(pid, "fork");
    printf("fork ok\n");
}

/* 2. Group exclusivity across processes; leaves group 1 closed everywhere (c stays open). */
static void case_busy(int c, int g) {
    pid_t pid = spawn();
    if (pid == 0) {
        struct vfio_group_status st = { .argsz = sizeof st };
        CHECK(ioctl(g, VFIO_GROUP_GET_STATUS, &st) == 0 && (st.flags & VFIO_GROUP_FLAGS_CONTAINER_SET),
              "the inherited group fd is the parent's group (in its container)");
        expect_busy("child of the holder");
        exit(0);
    }
    reap(pid, "busy");

    /* The parent closes, the child opens at once; the child closes, the parent opens at once. */
    pid = spawn();
    if (pid == 0) {
        close(g); /* the parent's fd is the group's last */
        say();
        hear();
        int g2 = open_group(1); /* fails the child if the parent's close did not release it */
        close(g2);
        say();
        hear();
        exit(0);
    }
    hear();
    expect_busy("the holder itself");
    CHECK(close(g) == 0, "close the group");
    say();
    hear();
    close(open_group(1)); /* right after the child's close, the child still running */
    say();
    reap(pid, "busy close/open");

    /* The holder is a child that exits: the group opens right after waitpid. */
    pid = spawn();
    if (pid == 0) {
        open_group(1);
        say();
        hear();
        exit(0); /* still holding it */
    }
    hear();
    expect_busy("parent while a child holds it");
    say();
    reap(pid, "busy exit");
    close(open_group(1));
    CHECK(ioctl(c, VFIO_GET_API_VERSION) == VFIO_API_VERSION, "the container outlives its group");
    printf("busy ok\n");
}

/* 3. A container received over SCM_RIGHTS is the sender's. */
static void case_scm(int c, int g) {
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    pid_t pid = spawn();
    if (pid == 0) {
        close(sv[0]);
        close(c); /* no inherited reference to the container: only the received one */
        close(g);
        int rc = recv_fd(sv[1]);
        CHECK(ioctl(rc, VFIO_GET_API_VERSION) == VFIO_API_VERSION, "received fd %d: GET_API_VERSION", rc);
        CHECK(ioctl(rc, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) == 1, "received fd: CHECK_EXTENSION TYPE1v2");
        void *p = map_anon(4 * PG);
        CHECK(dma_map(rc, p, 0x100000, 4 * PG) == 0, "child MAP_DMA through the received container");
        say();
        hear();
        exit(0);
    }
    close(sv[1]);
    send_fd(sv[0], c);
    hear();
    parent_sees_child_map(c, 0x100000, "scm");
    say();
    reap(pid, "scm");
    close(sv[0]);
    printf("scm ok\n");
}

/* 4. exec keeps a container fd without FD_CLOEXEC; the side after exec is exec_child(). */
static void case_exec(const char *self, int c, int g) {
    CHECK(fcntl(c, F_SETFD, 0) == 0, "clear FD_CLOEXEC of the container");
    CHECK(fcntl(g, F_SETFD, FD_CLOEXEC) == 0, "group fd close-on-exec: the new image must not hold the group");
    pid_t pid = spawn();
    if (pid == 0) {
        char num[16];
        snprintf(num, sizeof num, "%d", c);
        execl("/proc/self/exe", self, "exec-child", num, (char *)NULL);
        CHECK(0, "exec /proc/self/exe");
    }
    reap(pid, "exec");
    printf("exec ok\n");
}

static int exec_child(const char *num) {
    alarm(30);
    int c = atoi(num);
    CHECK(ioctl(c, VFIO_GET_API_VERSION) == VFIO_API_VERSION, "fd %d kept across exec: GET_API_VERSION", c);
    CHECK(ioctl(c, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) == 1, "fd %d kept across exec: CHECK_EXTENSION", c);
    void *p = map_anon(4 * PG);
    CHECK(dma_map(c, p, 0x200000, 4 * PG) == 0, "MAP_DMA after exec (the container keeps its group and IOMMU)");
    uint64_t un = 0;
    CHECK(dma_unmap(c, 0x200000, 4 * PG, &un) == 0 && un == 4 * PG, "UNMAP after exec: unmapped %llu",
          (unsigned long long)un);
    expect_busy("exec'd child");
    printf("exec-child ok\n");
    return 0;
}

/* 5. DMA started by a child reaches the pages of the parent that mapped them. Leaves the
 * parent's buffer mapped (2 pages at 0x300000) for case 6. */
static void case_dma(int c, int g, long base) {
    open_device(g);
    unsigned char *buf = map_anon(2 * PG);
    memset(buf, 0x5a, PG);
    memset(buf + PG, 0, PG);
    CHECK(dma_map(c, buf, 0x300000, 2 * PG) == 0, "parent MAP_DMA");
    long pin = status_kb("VmPin");
    CHECK(pin >= base + 8, "the parent's 8 KiB are pinned in the parent: VmPin %ld kB, start %ld", pin, base);
    pid_t pid = spawn();
    if (pid == 0) {
        memset(buf, 0xc3, 2 * PG); /* the child's own copy now differs from the parent's pages */
        uint32_t st = dma(0x300000, 0, PG, 0);
        CHECK(st == STATUS_DONE, "child: device read of iova 0x300000: status 0x%x", st);
        unsigned char got[PG];
        CHECK(pread(dev, got, PG, bar0 + BUFFER) == PG, "read the device buffer");
        long i = first_not(got, PG, 0x5a);
        CHECK(i < 0, "device read byte %ld = 0x%x: want the parent's 0x5a (0xc3 is the child's copy)", i, got[i]);
        st = dma(0, 0x301000, PG, CMD_TO_MEMORY);
        CHECK(st == STATUS_DONE, "child: device write to iova 0x301000: status 0x%x", st);
        CHECK(first_not(buf, 2 * PG, 0xc3) < 0, "the child's own copy is not the device's memory");
        exit(0);
    }
    reap(pid, "dma");
    long i = first_not(buf, 2 * PG, 0x5a);
    CHECK(i < 0, "parent byte %ld = 0x%x after the child's DMA: want 0x5a (page 0 kept, page 1 written)", i, buf[i]);
    printf("dma ok\n");
}

/* Reads one page at `iova` through the device into `got`. */
static void device_read(uint64_t iova, unsigned char *got) {
    uint32_t st = dma(iova, 0, PG, 0);
    CHECK(st == STATUS_DONE, "device read of iova 0x%llx: status 0x%x", (unsigned long long)iova, st);
    CHECK(pread(dev, got, PG, bar0 + BUFFER) == PG, "read the device buffer");
}

static long first_other(const unsigned char *p, size_t n, unsigned char v) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != v) return (long)i;
    return -1;
}

/* 6. Pins outlive the process that made them while the container lives: after its exit, and
 * across its exec. */
static void case_outlive(const char *self, int c) {
    unsigned char got[PG];
    pid_t pid = spawn();
    if (pid == 0) {
        unsigned char *p = map_anon(PG);
        memset(p, 0x77, PG);
        CHECK(dma_map(c, p, 0x400000, PG) == 0, "child MAP_DMA");
        exit(0); /* without UNMAP: the parent still holds the container */
    }
    reap(pid, "outlive");
    device_read(0x400000, got);
    long i = first_other(got, PG, 0x77);
    CHECK(i < 0, "the exited child's page, read by the device: byte %ld = 0x%x, want 0x77", i, got[i]);
    memset(got, 0xe1, PG);
    CHECK(pwrite(dev, got, PG, bar0 + BUFFER) == PG, "fill the device buffer");
    CHECK(dma(0, 0x400000, PG, CMD_TO_MEMORY) == STATUS_DONE, "device write to the exited child's page");
    memset(got, 0, PG);
    device_read(0x400000, got);
    CHECK(first_other(got, PG, 0xe1) < 0, "the device's write stayed in the exited child's page");
    uint64_t un = 0;
    CHECK(dma_unmap(c, 0x400000, PG, &un) == 0 && un == PG, "the parent unmaps the child's page");

    /* exec: QEMU's CPR keeps the container and device fds and the guest's pinned memory. */
    pid = spawn();
    if (pid == 0) {
        unsigned char *p = map_anon(PG);
        memset(p, 0x3c, PG);
        CHECK(dma_map(c, p, 0x500000, PG) == 0, "MAP_DMA before exec");
        CHECK(fcntl(c, F_SETFD, 0) == 0 && fcntl(dev, F_SETFD, 0) == 0, "keep fds across exec");
        char cs[16], ds[16];
        snprintf(cs, sizeof cs, "%d", c);
        snprintf(ds, sizeof ds, "%d", dev);
        execl("/proc/self/exe", self, "cpr-child", cs, ds, (char *)NULL);
        CHECK(0, "exec /proc/self/exe");
    }
    reap(pid, "cpr");
    printf("outlive ok\n");
}

static int cpr_child(const char *cs, const char *ds) {
    alarm(30);
    int c = atoi(cs);
    dev = atoi(ds);
    /* Before any ioctl names them, the inherited fds are the emulated files already. */
    uint32_t id = 0;
    CHECK(pread(dev, &id, 4, 0) == 4 && id == 0x010000ed, "pread of BAR0's ID before any ioctl after exec: 0x%x", id);
    struct stat st;
    CHECK(fstat(c, &st) == 0 && S_ISCHR(st.st_mode), "fstat of the inherited container before any ioctl");
    struct vfio_region_info r0;
    region(VFIO_PCI_BAR0_REGION_INDEX, &r0);
    bar0 = r0.offset;
    unsigned char got[PG];
    device_read(0x500000, got);
    long i = first_other(got, PG, 0x3c);
    CHECK(i < 0, "after exec, the device reads the page mapped before it: byte %ld = 0x%x", i, got[i]);
    uint64_t un = 0;
    CHECK(dma_unmap(c, 0x500000, PG, &un) == 0 && un == PG, "UNMAP after exec");
    printf("cpr-child ok\n");
    return 0;
}

/* 7. The last close, in whatever process, releases: VmPin back to where it started. */
static void case_release(int c, int g, long base) {
    pid_t pid = spawn();
    if (pid == 0) {
        hear(); /* holds its inherited container, group and device fds until told */
        exit(0);
    }
    close(dev);
    close(g);
    close(c);
    long pin = status_kb("VmPin");
    CHECK(pin >= base + 8, "a child still holds the container: the parent's pins stay (VmPin %ld kB, start %ld)",
          pin, base);
    expect_busy("parent after its close, a child holding the group");
    say();
    reap(pid, "release");
    pin = status_kb("VmPin");
    CHECK(pin == base, "all closed everywhere: VmPin %ld kB, want the start's %ld", pin, base);
    close(open_group(1));
    printf("release ok\n");
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "exec-child")) return exec_child(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "cpr-child")) return cpr_child(argv[2], argv[3]);
    CHECK(argc == 1, "usage: share [exec-child FD | cpr-child C DEV]");
    alarm(60);
    signal(SIGPIPE, SIG_IGN); /* a dead peer is a failed write, reported */
    long base = status_kb("VmPin");
    CHECK(base >= 0, "VmPin in /proc/self/status");

    int g;
    int c = open_container(1, &g);
    case_fork(c);
    case_busy(c, g); /* closes g */
    close(c);

    c = open_container(1, &g);
    case_scm(c, g);
    case_exec(argv[0], c, g);
    case_dma(c, g, base);
    case_outlive(argv[0], c);
    case_release(c, g, base); /* closes c, g and the device */
    printf("share ok\n");
    return 0;
}
