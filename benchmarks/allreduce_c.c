/* Reference MPI_Allreduce timing in C (float32, MPI_SUM), the baseline for benchmarks/allreduce.py.
 *
 * Usage: mpiexec -n N allreduce_c [TARGET_SECONDS [REPEATS [MAX_BYTES]]]   (defaults 0.35 7 67108864)
 *
 * For each message size 4 KiB, 16 KiB, ..., MAX_BYTES (powers of 4): 3 warm-up calls; then the
 * per-call time t (max over ranks) is estimated from k = 1, 2, 4, ... timed calls, doubling k until
 * they take a quarter of one repeat; iters = TARGET_SECONDS / REPEATS / t (clamped to [1, 100000]). Then REPEATS times: barrier, time iters calls, per-call time = elapsed /
 * iters, max over ranks. Rank 0 prints one JSON line per size with the median (and min) of those.
 * The timing policy must stay identical to _measure() in benchmarks/allreduce.py.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#define WARMUP 3
#define MAX_ITERS 100000

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Per-call seconds of `iters` back-to-back allreduces, max over ranks. */
static double time_calls(const float *send, float *recv, int n, int iters) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++)
        MPI_Allreduce(send, recv, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    double dt = (MPI_Wtime() - t0) / iters, worst;
    MPI_Allreduce(&dt, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return worst;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    double target = argc > 1 ? atof(argv[1]) : 0.35;
    int repeats = argc > 2 ? atoi(argv[2]) : 7;
    long max_bytes = argc > 3 ? atol(argv[3]) : 64L << 20;
    double *times = malloc(sizeof(double) * (size_t)repeats);

    for (long bytes = 4096; bytes <= max_bytes; bytes *= 4) {
        int n = (int)(bytes / (long)sizeof(float));
        float *send = malloc((size_t)bytes), *recv = malloc((size_t)bytes);
        for (int i = 0; i < n; i++) { send[i] = 1.0f; recv[i] = 0.0f; }

        for (int i = 0; i < WARMUP; i++)
            MPI_Allreduce(send, recv, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        int k = 1;  /* calibrate: double k until k calls take >= a quarter of one repeat */
        double est = time_calls(send, recv, n, k);
        while (k * est < target / repeats / 4 && k < MAX_ITERS) {
            k *= 2;
            est = time_calls(send, recv, n, k);
        }
        long it = (long)(target / repeats / est + 0.5);
        int iters = (int)(it < 1 ? 1 : it > MAX_ITERS ? MAX_ITERS : it);
        for (int r = 0; r < repeats; r++)
            times[r] = time_calls(send, recv, n, iters);

        if (recv[0] != (float)size || recv[n - 1] != (float)size) {
            fprintf(stderr, "allreduce_c: wrong result %g (expected %d)\n", recv[0], size);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        qsort(times, (size_t)repeats, sizeof(double), cmp_double);
        if (rank == 0) {
            printf("{\"impl\":\"c\",\"bytes\":%ld,\"seconds\":%.9g,\"min_seconds\":%.9g,"
                   "\"iters\":%d,\"repeats\":%d}\n",
                   bytes, times[repeats / 2], times[0], iters, repeats);
            fflush(stdout);
        }
        free(send);
        free(recv);
    }
    free(times);
    MPI_Finalize();
    return 0;
}
