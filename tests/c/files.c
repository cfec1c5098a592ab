/* Emulated files look like the kernel's (issue 9 item 4): read/write and their vector forms as
 * vfio's files answer them, fstat/stat as character devices, the /dev/vfio directory, every
 * path spelling the kernel accepts, O_PATH handles that are no live object, readlink with size
 * 0, and errno left alone by calls that succeed. */
#define _GNU_SOURCE
#include "common.h"
#include "device.h"
#include <dirent.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>

#define PG 4096

static void containers_and_groups_have_no_read_or_write(int c, int g) {
    char b[8];
    struct iovec v = { b, sizeof b };
    EXPECT_ERRNO(EINVAL, (int)read(c, b, sizeof b));
    EXPECT_ERRNO(EINVAL, (int)write(c, b, sizeof b));
    EXPECT_ERRNO(EINVAL, (int)read(g, b, sizeof b));
    EXPECT_ERRNO(EINVAL, (int)write(g, b, sizeof b));
    EXPECT_ERRNO(EINVAL, (int)readv(g, &v, 1));
    EXPECT_ERRNO(EINVAL, (int)pwrite(c, b, sizeof b, 0));
    EXPECT_ERRNO(EINVAL, (int)preadv(c, &v, 1, 0));
}

static void device_io_goes_by_region(void) {
    /* read() at the file position: it starts at 0 (BAR0's registers) and advances. */
    uint32_t id = 0, live = 0;
    wr32(REG_LIVENESS, 0x12345678);
    CHECK(read(dev, &id, 4) == 4 && id == 0x010000ed, "read() at position 0: ID 0x%x", id);
    CHECK(read(dev, &live, 4) == 4 && live == ~0x12345678u, "second read() at 4: LIVENESS 0x%x", live);
    EXPECT_ERRNO(ESPIPE, (int)lseek(dev, 0, SEEK_SET));
    /* Vector I/O at an offset, into BAR2 (device memory), seen by mmap of the BAR. */
    struct vfio_region_info r2;
    region(VFIO_PCI_BAR2_REGION_INDEX, &r2);
    char a[100], b[200], back[300];
    memset(a, 0x11, sizeof a);
    memset(b, 0x22, sizeof b);
    struct iovec w[2] = { { a, sizeof a }, { b, sizeof b } };
    CHECK(pwritev(dev, w, 2, r2.offset + 8) == 300, "pwritev into BAR2");
    struct iovec rd = { back, sizeof back };
    CHECK(preadv(dev, &rd, 1, r2.offset + 8) == 300, "preadv from BAR2");
    CHECK(back[0] == 0x11 && back[99] == 0x11 && back[100] == 0x22 && back[299] == 0x22,
          "BAR2 bytes in order");
    unsigned char *m = mmap(NULL, PG, PROT_READ, MAP_SHARED, dev, r2.offset);
    CHECK(m != MAP_FAILED, "mmap BAR2");
    CHECK(m[8] == 0x11 && m[8 + 100] == 0x22, "mmap shows what pwritev wrote");
    munmap(m, PG);
    /* A write at offset 0 is a BAR0 register write, never device memory. */
    uint32_t v = 0xabcdef01;
    CHECK(pwrite(dev, &v, 4, bar0 + REG_LIVENESS) == 4, "pwrite LIVENESS");
    CHECK(rd32(REG_LIVENESS) == ~v, "LIVENESS after pwrite");
}

static void fstat_says_character_device(int c, int g) {
    struct stat st;
    CHECK(fstat(c, &st) == 0 && S_ISCHR(st.st_mode), "fstat container: mode 0%o", st.st_mode);
    CHECK(major(st.st_rdev) == 10 && minor(st.st_rdev) == 196, "container rdev %u:%u",
          major(st.st_rdev), minor(st.st_rdev));
    struct stat gs, ps;
    CHECK(fstat(g, &gs) == 0 && S_ISCHR(gs.st_mode) && minor(gs.st_rdev) == 1, "fstat group");
    CHECK(stat("/dev/vfio/1", &ps) == 0 && S_ISCHR(ps.st_mode) && ps.st_rdev == gs.st_rdev,
          "stat(/dev/vfio/1) agrees with fstat of the group");
    CHECK(fstatat(g, "", &ps, AT_EMPTY_PATH) == 0 && ps.st_rdev == gs.st_rdev, "fstatat AT_EMPTY_PATH");
    struct stat ds;
    CHECK(fstat(dev, &ds) == 0 && (ds.st_mode & S_IFMT) == 0, "device fd: anonymous inode, mode 0%o",
          ds.st_mode);
    CHECK(stat("/dev/vfio", &st) == 0 && S_ISDIR(st.st_mode), "stat(/dev/vfio) is a directory");
}

static void directory_and_spellings(void) {
    DIR *d = opendir("/dev/vfio");
    CHECK(d, "opendir /dev/vfio");
    int seen = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, "vfio")) seen |= 1;
        if (!strcmp(e->d_name, "0")) seen |= 2;
        if (!strcmp(e->d_name, "1")) seen |= 4;
    }
    CHECK(seen == 7, "readdir(/dev/vfio) lists vfio, 0 and 1 (seen %d)", seen);
    /* openat relative to the directory opens the group itself. */
    int g = openat(dirfd(d), "1", O_RDWR);
    CHECK(g >= 0, "openat(dirfd(/dev/vfio), \"1\")");
    struct vfio_group_status gst = { .argsz = sizeof gst };
    CHECK(ioctl(g, VFIO_GROUP_GET_STATUS, &gst) == 0, "GET_STATUS on the openat fd");
    EXPECT_ERRNO(EBUSY, open("/dev/vfio//1", O_RDWR));
    EXPECT_ERRNO(EBUSY, open("/dev/vfio/../vfio/1", O_RDWR));
    EXPECT_ERRNO(EBUSY, open("/dev/./vfio/1", O_RDWR));
    EXPECT_ERRNO(ENOTDIR, open("/dev/vfio/1/", O_RDWR));
    CHECK(chdir("/dev") == 0, "chdir /dev");
    EXPECT_ERRNO(EBUSY, open("vfio/1", O_RDWR));
    int dd = open("/dev/vfio", O_RDONLY | O_DIRECTORY);
    CHECK(dd >= 0, "open /dev/vfio O_DIRECTORY");
    EXPECT_ERRNO(EBUSY, openat(dd, "1", O_RDWR));
    close(dd);
    /* O_PATH: a handle, not an open of the device: no EBUSY, no ioctl, stat works. */
    int p = open("/dev/vfio/1", O_PATH);
    CHECK(p >= 0, "O_PATH open while the group is open");
    EXPECT_ERRNO(EBADF, ioctl(p, VFIO_GROUP_GET_STATUS, &gst));
    struct stat st;
    CHECK(fstat(p, &st) == 0 && S_ISCHR(st.st_mode) && minor(st.st_rdev) == 1, "fstat O_PATH handle");
    close(p);
    CHECK(ioctl(g, VFIO_GROUP_GET_STATUS, &gst) == 0, "closing the O_PATH handle left the group open");
    close(g);
    closedir(d);
    int again = open("/dev/vfio/1", O_RDWR);
    CHECK(again >= 0, "the group opens again after its close");
    close(again);
}

int main(void) {
    alarm(60);
    int g;
    int c = open_container(1, &g);
    containers_and_groups_have_no_read_or_write(c, g);
    open_device(g);
    device_io_goes_by_region();
    fstat_says_character_device(c, g);

    /* errno is left alone by calls that succeed. */
    void *buf = map_anon(4 * PG);
    errno = 12345;
    CHECK(dma_map(c, buf, 0x100000, 4 * PG) == 0 && errno == 12345, "MAP leaves errno (%d)", errno);
    uint64_t un;
    CHECK(dma_unmap(c, 0x100000, 4 * PG, &un) == 0 && errno == 12345, "UNMAP leaves errno");
    char lb[8];
    EXPECT_ERRNO(EINVAL, (int)readlink("/sys/bus/pci/devices/0000:00:05.0/iommu_group", lb, 0));

    close(dev);
    close(g);
    close(c);
    directory_and_spellings();
    printf("files ok\n");
    return 0;
}
