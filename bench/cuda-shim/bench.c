/*
 * ns per driver call: dlopen LIB (the fake driver, or the shim in front of it),
 * resolve cuDeviceGet through cuGetProcAddress_v2 as the CUDA 12 runtime does,
 * and time N calls, best of R runs. cuDeviceGet is cheap in the fake driver and
 * goes through the shim's full fault check (unlike version queries), so the
 * difference between rows is the shim's cost per unfaulted call.
 *
 *   bench LIB LABEL [N]
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef int (*gpa2_t)(const char *, void **, int, unsigned long long, int *);
typedef int (*init_t)(unsigned);
typedef int (*device_get_t)(int *, int);

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench LIB LABEL [N]\n");
        return 2;
    }
    long n = argc > 3 ? atol(argv[3]) : 20000000L;
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) {
        fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
        return 2;
    }
    gpa2_t gpa;
    *(void **)&gpa = dlsym(h, "cuGetProcAddress_v2");
    init_t init = NULL;
    device_get_t get = NULL;
    int status;
    if (!gpa || gpa("cuInit", (void **)&init, 12040, 0, &status) ||
        gpa("cuDeviceGet", (void **)&get, 12040, 0, &status) || init(0)) {
        fprintf(stderr, "cannot resolve or init through %s\n", argv[1]);
        return 2;
    }
    double best = 1e30;
    int dev = 0, errors = 0;
    for (int r = 0; r < 7; r++) {
        double t0 = now_ns();
        for (long i = 0; i < n; i++)
            errors += get(&dev, 0) != 0;
        double per = (now_ns() - t0) / n;
        if (per < best)
            best = per;
    }
    printf("| %s | %.2f | %ld | %d |\n", argv[2], best, n, errors);
    return errors != 0;
}
