/*
 * dirty: keeps rewriting SIZE MiB of memory at RATE MiB/s (0 = as fast as it can), for
 * Shepherd's migration tests and benchmark. Built statically into the tiny guest image.
 *
 *   dirty SIZE_MIB [RATE_MIB_PER_S]
 *
 * Every page gets fresh pseudo-random words on every pass, so neither QEMU's zero-page
 * detection nor XBZRLE's delta encoding can shrink what has to be resent. Once a second it
 * prints the rate it achieved ("dirty: 97 MiB/s"): under auto-converge the guest's CPU is
 * throttled and the rate drops, which is what the migration benchmark wants to see.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long parse(const char *text, const char *what, long min) {
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < min || value > (1L << 20)) {
        fprintf(stderr, "dirty: %s must be a whole number from %ld to 1048576, not '%s'\n", what, min, text);
        exit(2);
    }
    return value;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: dirty SIZE_MIB [RATE_MIB_PER_S]   (rate 0 or absent = flat out)\n");
        return 2;
    }
    const size_t chunk = 256 << 10;   /* pacing granularity */
    size_t size = (size_t)parse(argv[1], "SIZE_MIB", 1) << 20;
    double rate = argc == 3 ? (double)parse(argv[2], "RATE_MIB_PER_S", 0) * 1048576.0 : 0;
    uint64_t *memory = malloc(size);
    if (!memory) {
        fprintf(stderr, "dirty: cannot allocate %zu MiB\n", size >> 20);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (rate > 0) printf("dirty: rewriting %zu MiB at %s MiB/s\n", size >> 20, argv[2]);
    else printf("dirty: rewriting %zu MiB flat out\n", size >> 20);

    uint64_t state = 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
    double start = now(), lastReport = start;
    double written = 0, writtenAtReport = 0;
    size_t offset = 0;
    for (;;) {
        /* xorshift64: cheap, never zero, different on every pass over the same page. */
        uint64_t *word = memory + offset / sizeof(uint64_t);
        for (size_t i = 0; i < chunk / sizeof(uint64_t); i++) {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            word[i] = state;
        }
        offset = (offset + chunk) % size;   /* size is whole MiB: a multiple of chunk */
        written += chunk;

        double t = now();
        if (rate > 0) {
            /* Paused or throttled for a while (a migration's switch-over, auto-converge): start
             * pacing again from now instead of bursting to catch up. */
            if ((t - start) - written / rate > 1.0) { start = t - written / rate; }
            double ahead = written / rate - (t - start);
            if (ahead > 0) {
                struct timespec pause = { (time_t)ahead, (long)((ahead - (time_t)ahead) * 1e9) };
                nanosleep(&pause, NULL);
                t = now();
            }
        }
        if (t - lastReport >= 1.0) {
            printf("dirty: %.0f MiB/s\n", (written - writtenAtReport) / 1048576.0 / (t - lastReport));
            writtenAtReport = written;
            lastReport = t;
        }
    }
}
