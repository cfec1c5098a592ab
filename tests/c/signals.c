/* Emulated calls from a signal handler: a timer interrupts a loop of device register reads
 * (answered in the process), register writes and ioctls (answered by the broker), and the
 * handler reads the ID register and asks for a region's info too. As in the kernel, where a
 * handler runs on the way back to user space, after the interrupted call has completed, every
 * call in the handler succeeds: never EDEADLK, never other bytes. */
#define _GNU_SOURCE
#include "device.h"
#include <signal.h>
#include <sys/time.h>

static volatile sig_atomic_t good, refused, wrong, signals;

static void on_alarm(int sig) {
    (void)sig;
    int saved = errno;
    uint32_t v = 0;
    ssize_t n = pread(dev, &v, 4, bar0 + REG_ID);
    struct vfio_region_info r = { .argsz = sizeof r, .index = VFIO_PCI_BAR0_REGION_INDEX };
    int ri = ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &r);
    if (n == 4 && v == 0x010000ed && ri == 0 && r.offset == bar0)
        good++;
    else if (n < 0 && errno == EDEADLK)
        refused++;
    else
        wrong++;
    signals++;
    errno = saved;
}

int main(void) {
    int g;
    int c = open_container(1, &g);
    open_device(g);
    struct sigaction sa = { .sa_handler = on_alarm, .sa_flags = SA_RESTART };
    CHECK(sigaction(SIGALRM, &sa, NULL) == 0, "sigaction");
    struct itimerval it = { .it_interval = { 0, 200 }, .it_value = { 0, 200 } };
    CHECK(setitimer(ITIMER_REAL, &it, NULL) == 0, "setitimer");
    long loops = 0;
    while (signals < 2000) {
        CHECK(rd32(REG_ID) == 0x010000ed, "ID in the main loop");
        wr32(REG_STATUS, STATUS_DONE | STATUS_FAULT); /* reaches the broker */
        struct vfio_region_info r;
        region(VFIO_PCI_CONFIG_REGION_INDEX, &r); /* an ioctl */
        loops++;
    }
    struct itimerval off = { 0 };
    setitimer(ITIMER_REAL, &off, NULL);
    CHECK(wrong == 0, "%d wrong reads in the handler", (int)wrong);
    CHECK(refused == 0, "%d handler calls refused with EDEADLK", (int)refused);
    CHECK(good == signals, "every handler call succeeded (%d of %d)", (int)good, (int)signals);
    printf("signals ok: %d handler calls, %ld loops\n", (int)good, loops);
    close(dev);
    close(g);
    close(c);
    return 0;
}
