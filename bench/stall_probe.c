/* A probe for stalls of the whole machine (bench/run.py runs one per CPU during the open-loop runs).

   It asks to wake every millisecond and prints each wake-up that came more than THRESHOLD_MS late.
   Run at real-time priority (chrt -f), it preempts every ordinary task the moment its timer fires,
   so a late wake-up means the CPU ran nothing of this guest at all: the hypervisor had taken it (this
   KVM guest reports no steal time) or the kernel ran with interrupts off. When both CPUs' probes are
   late at the same moment, no process of the benchmark could have answered a request then.

   Usage: stall_probe SECONDS THRESHOLD_MS. Output: "late <CLOCK_MONOTONIC s when it went to sleep>
   <ms late>" lines, one as each happens, then "done <wake-ups> <worst ms late>" if it is not killed
   first. CLOCK_MONOTONIC is Python's time.monotonic(), the clock bench/openloop.py stamps requests
   with. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: stall_probe SECONDS THRESHOLD_MS\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0); /* each line as it happens: bench/run.py kills the probe when done */
    const double end = now() + atof(argv[1]), threshold = atof(argv[2]) / 1e3, tick_s = 0.001;
    const struct timespec tick = {0, 1000000};
    long wakeups = 0;
    double worst = 0;
    while (now() < end) {
        const double before = now();
        clock_nanosleep(CLOCK_MONOTONIC, 0, &tick, NULL);
        const double late = now() - before - tick_s;
        wakeups++;
        if (late > worst) worst = late;
        if (late > threshold) printf("late %.6f %.3f\n", before, late * 1e3);
    }
    printf("done %ld %.3f\n", wakeups, worst * 1e3);
    return 0;
}
