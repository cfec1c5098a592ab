/* Emulated calls from a signal handler: a timer interrupts a loop of device register reads and
 * the handler reads the ID register too. Every read in the handler either returns the real ID
 * or fails with a clear errno (EDEADLK when it interrupted an emulated call); it never returns
 * other bytes. */
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
    if (n == 4 && v == 0x010000ed)
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
        loops++;
    }
    struct itimerval off = { 0 };
    setitimer(ITIMER_REAL, &off, NULL);
    CHECK(wrong == 0, "%d wrong reads in the handler", (int)wrong);
    CHECK(good + refused == signals, "every handler read accounted for");
    printf("signals ok: %d good, %d refused (EDEADLK), %ld loops\n", (int)good, (int)refused, loops);
    close(dev);
    close(g);
    close(c);
    return 0;
}
