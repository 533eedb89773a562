/* Reference MPI_Allreduce timing in C (float32, MPI_SUM), the baseline for benchmarks/allreduce.py.
 *
 * Usage: mpiexec -n N allreduce_c [TARGET_SECONDS [REPEATS [MAX_BYTES [single|multiple]]]]
 *        (defaults 0.35 7 67108864 multiple)
 *
 * MPI is initialised with MPI_Init_thread at the requested level: "multiple" (the default) matches
 * what mpi4py (and so mpiml) asks for. The level matters: MPICH's intra-node shared-memory
 * allreduce (release_gather) is only used below MPI_THREAD_MULTIPLE.
 *
 * For each message size 4 KiB, 16 KiB, ..., MAX_BYTES (powers of 4): 3 warm-up calls; then the
 * per-call time t (max over ranks) is estimated from k = 1, 2, 4, ... timed calls, doubling k until
 * they take a quarter of one repeat; iters = TARGET_SECONDS / REPEATS / t (clamped to [1, 100000]).
 * Then REPEATS times: barrier, time iters calls, per-call time = elapsed / iters, max over ranks.
 * Rank 0 prints one JSON line per size with the median (and min) of those. The timing policy must
 * stay identical to _measure() in benchmarks/allreduce.py.
 *
 * The same file, built with -shared -fPIC, gives allreduce_loop(), which the Python ranks of
 * benchmarks/allreduce.py call through ctypes: the C baseline measured inside the Python launch.
 *
 * Buffers are allocated roughly as numpy allocates its arrays: page-aligned, and from 4 MiB up
 * hinted with madvise(MADV_HUGEPAGE) (numpy's default threshold). Placement matters on the machine
 * this was written on: with plain malloc() (send and recv adjacent on the heap) 16-64 KiB ran ~2x
 * slower; with 2 MiB-aligned huge-page buffers 4 MiB ran ~1.3x faster and 64 MiB ~10% slower.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define WARMUP 3
#define MAX_ITERS 100000

/* A buffer of `bytes` allocated as described above (exits on failure). */
static float *alloc_buffer(long bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 4096, (size_t)bytes) != 0) {
        fprintf(stderr, "allreduce_c: cannot allocate %ld bytes\n", bytes);
        exit(1);
    }
    if (bytes >= (4L << 20))
        madvise(p, (size_t)bytes, MADV_HUGEPAGE);  /* a hint; failure is harmless */
    return p;
}

/* `iters` back-to-back allreduces on the communicator with Fortran handle `fcomm` (for ctypes). */
void allreduce_loop(const float *send, float *recv, int n, int iters, MPI_Fint fcomm) {
    MPI_Comm comm = MPI_Comm_f2c(fcomm);
    for (int i = 0; i < iters; i++)
        MPI_Allreduce(send, recv, n, MPI_FLOAT, MPI_SUM, comm);
}

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
    int want = argc > 4 && strcmp(argv[4], "single") == 0 ? MPI_THREAD_SINGLE : MPI_THREAD_MULTIPLE;
    int provided;
    MPI_Init_thread(&argc, &argv, want, &provided);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    double target = argc > 1 ? atof(argv[1]) : 0.35;
    int repeats = argc > 2 ? atoi(argv[2]) : 7;
    long max_bytes = argc > 3 ? atol(argv[3]) : 64L << 20;
    double *times = malloc(sizeof(double) * (size_t)repeats);

    for (long bytes = 4096; bytes <= max_bytes; bytes *= 4) {
        int n = (int)(bytes / (long)sizeof(float));
        float *send = alloc_buffer(bytes), *recv = alloc_buffer(bytes);
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
                   "\"iters\":%d,\"repeats\":%d,\"thread_level\":\"%s\"}\n",
                   bytes, times[repeats / 2], times[0], iters, repeats,
                   provided == MPI_THREAD_MULTIPLE ? "multiple"
                   : provided == MPI_THREAD_SINGLE ? "single" : "other");
            fflush(stdout);
        }
        free(send);
        free(recv);
    }
    free(times);
    MPI_Finalize();
    return 0;
}
