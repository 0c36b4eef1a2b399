/* lb_uring_raw.c - a hand-written io_uring loop for the peers' loopbench
 * (../shared/peers/src/lb.h): the floor that ioplex's uring backend is
 * measured against, as lb_raw.c is the floor for select, poll and epoll.
 *
 * Level-triggered in effect: each watched fd has one one-shot
 * IORING_OP_POLL_ADD in flight, re-armed once its completion has been
 * handled (the kernel checks readiness when a poll is armed, so a byte left
 * behind is reported again at once).  All re-arms of an iteration go to the
 * kernel in the io_uring_submit_and_wait() that also waits for the next
 * completions: one system call per iteration, besides the recv and send of
 * the per-event work.  The SQ holds one entry per fd, so an iteration never
 * has to submit early.
 *
 * The ring asks for SINGLE_ISSUER | DEFER_TASKRUN (Linux 6.1), as ioplex's
 * backend does, and falls back to no flags where the kernel refuses them.
 *
 * Built by bench/Makefile together with the peers' lb.c; nothing of the
 * peers is copied here. */
#include "lb.h"

#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>

static struct io_uring ring;
static const char *flavour = "uring";

static unsigned ring_size(int n)
{
    unsigned size = 64;
    while (size < (unsigned)n && size < 32768)
        size *= 2;
    return size;
}

static int ring_init(int n)
{
    static const unsigned tries[] = {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, 0};
    int rc = -EINVAL;
    for (size_t i = 0; i < sizeof tries / sizeof tries[0]; i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        p.flags = tries[i] | IORING_SETUP_CLAMP;
        rc = io_uring_queue_init_params(ring_size(n), &ring, &p);
        if (rc != -EINVAL)
            break;
    }
    return rc;
}

/* Queue a one-shot poll for pair i; submits early only if the SQ is full
 * (never with n <= 32768 pairs). */
static int arm(int i)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    if (!sqe) {
        io_uring_submit(&ring);
        sqe = io_uring_get_sqe(&ring);
        if (!sqe)
            return -1;
    }
    io_uring_prep_poll_add(sqe, lb_rfd(i), POLLIN);
    io_uring_sqe_set_data64(sqe, (unsigned)i);
    return 0;
}

static int setup(const char *backend, int n)
{
    if (strcmp(backend, "uring") != 0) {
        fprintf(stderr, "raw-uring: unknown backend %s (uring only)\n", backend);
        return -1;
    }
    int rc = ring_init(n);
    if (rc < 0) {
        fprintf(stderr, "raw-uring: io_uring_queue_init: %s\n", strerror(-rc));
        return rc == -EPERM || rc == -ENOSYS ? -2 : -1;
    }
    for (int i = 0; i < n; i++)
        if (arm(i) < 0) {
            fprintf(stderr, "raw-uring: no SQE\n");
            return -1;
        }
    return 0;
}

/* Handle the completions that are there; 1 when the round is complete. */
static int drain(void)
{
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    int done = 0;
    io_uring_for_each_cqe(&ring, head, cqe)
    {
        int i = (int)cqe->user_data;
        seen++;
        if (cqe->res < 0) {
            fprintf(stderr, "raw-uring: poll on pair %d: %s\n", i, strerror(-cqe->res));
            done = -1;
            break;
        }
        if (arm(i) < 0) {
            done = -1;
            break;
        }
        if (lb_readable(i)) {
            done = 1;
            break;
        }
    }
    io_uring_cq_advance(&ring, seen);
    return done;
}

static int run(void)
{
    for (;;) {
        int rc = io_uring_submit_and_wait(&ring, 1);
        if (rc < 0 && rc != -EINTR && rc != -ETIME) {
            fprintf(stderr, "raw-uring: io_uring_submit_and_wait: %s\n", strerror(-rc));
            return -1;
        }
        rc = drain();
        if (rc != 0)
            return rc > 0 ? 0 : -1;
    }
}

static const char *backend(void)
{
    return flavour;
}

int main(int argc, char **argv)
{
    static const struct lb_impl impl = {"raw", setup, run, backend};
    return lb_main(argc, argv, &impl);
}
