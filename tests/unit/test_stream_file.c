/* test_stream_file.c - streams: sendfile and sendfilev: dup and close flags, small kernel buffers,
 * short files, unsent files, vanished peers. Helpers and the pair/peer model: stream_helpers.h. */
#include "stream_helpers.h"

/* ---- sendfile ---------------------------------------------------------- */

/* Expected bytes: header (seed 82), then file[off, off+len), then trailer
 * (seed 83); sent as write, sendfile, write, shutdown.  With IOP_SENDFILE_DUP
 * in flags, header and file go in one iop_stream_sendfilev and file_fd is
 * closed right after the call, as a file cache may.  bufs: kernel buffer
 * size of the pair, 0 for the default. */
static void sendfile_case(iop_loop *l, enum pair_kind kind, int file_fd, off_t off, size_t len,
                          unsigned flags, int bufs)
{
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    if (bufs)
        small_bufs(sv, bufs);
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    unsigned char header[1000], trailer[4093];
    fill(header, 82, 0, sizeof header);
    fill(trailer, 83, 0, sizeof trailer);
    size_t total = sizeof header + len + sizeof trailer;
    unsigned char *expect = malloc(total), *got = malloc(total);
    CHECK(expect && got);
    memcpy(expect, header, sizeof header);
    fill(expect + sizeof header, 81, (size_t)off, len);
    memcpy(expect + sizeof header + len, trailer, sizeof trailer);

    int rc;
    if (flags & IOP_SENDFILE_DUP) {
        struct iovec h = {header, sizeof header};
        rc = iop_stream_sendfilev(c.s, &h, 1, file_fd, off, len, flags);
        close(file_fd);
    } else {
        CHECK(iop_stream_write(c.s, header, sizeof header) >= 0);
        rc = iop_stream_sendfile(c.s, file_fd, off, len, flags);
    }
    CHECK(rc == 0 || rc == 1);
    note_full(&c, rc);
    CHECK(iop_stream_queued(c.s) <= sizeof header + len);
    rc = iop_stream_write(c.s, trailer, sizeof trailer);
    CHECK(rc == 0 || rc == 1);
    note_full(&c, rc);
    CHECK(iop_stream_queued(c.s) <= total);
    CHECK_OK(iop_stream_shutdown(c.s));
    /* The file is only read when sent: the peer starts late, so the stream
     * must wait for room more than once. */
    settle(l, 10);
    struct peer p;
    peer_keep(l, &p, sv[1], got, total);
    expect_got(l, &p, got, expect, total);
    CHECK_EQ(iop_stream_queued(c.s), 0);
    CHECK_EQ(c.errs, 0);
    pair_case_end(l, ctx, &c, &p, sv[1], expect, got);
}

IOP_TEST_BOTH(sendfile_between_writes)
{
    iop_loop *l = iop_test_loop(be);
    int fd = make_file();
    /* The whole file, kept open by us. */
    sendfile_case(l, kind, fd, 0, FILE_SIZE, 0, 0);
    CHECK(fd_is_open(fd));
    /* The middle part, with odd bounds. */
    sendfile_case(l, kind, fd, 4093, 2 * MiB + 1, 0, 0);
    /* The middle part again on a dup that the stream closes when done. */
    int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    CHECK(dup_fd >= 0);
    sendfile_case(l, kind, dup_fd, 65537, MiB + 7, IOP_SENDFILE_CLOSE, 0);
    CHECK(!fd_is_open(dup_fd));
    /* The file's own position was never used (pwrite left it at 0). */
    CHECK_EQ(lseek(fd, 0, SEEK_CUR), 0);
    close(fd);
    iop_test_loop_free(l);
}

/* iop_stream_sendfilev with IOP_SENDFILE_DUP: the caller's fd is closed at
 * once, yet the range still arrives whole, large (queued on a dup) or
 * small (sent within the call). */
IOP_TEST_BOTH(sendfilev_dup)
{
    iop_loop *l = iop_test_loop(be);
    int fd = make_file();
    int d1 = fcntl(fd, F_DUPFD_CLOEXEC, 0), d2 = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    CHECK(d1 >= 0 && d2 >= 0);
    sendfile_case(l, kind, d1, 4093, 2 * MiB + 1, IOP_SENDFILE_DUP, 0);
    sendfile_case(l, kind, d2, 13, 13, IOP_SENDFILE_DUP, 0);
    close(fd);
    iop_test_loop_free(l);
}

/* ---- out of descriptors: all of a call, or none of it ------------------- */

/* Lower the soft RLIMIT_NOFILE to the lowest free descriptor, so that none
 * can be made (fd: any open one); returns the limit to restore. */
static rlim_t nofile_exhaust(int fd)
{
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    int lowest = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    CHECK(lowest >= 0);
    close(lowest);
    rlim_t old = rl.rlim_cur;
    rl.rlim_cur = (rlim_t)lowest;
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
    CHECK(fcntl(fd, F_DUPFD_CLOEXEC, 0) < 0 && errno == EMFILE);
    return old;
}

static void nofile_restore(rlim_t cur)
{
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    rl.rlim_cur = cur;
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
}

/* A response (header + the whole file, IOP_SENDFILE_DUP) larger than the
 * socket takes, at EMFILE.  Without a descriptor to keep the file on, the
 * call must fail having sent nothing: not the head and part of the body,
 * which a client would read as a response cut short.  A spare descriptor
 * made by an earlier call carries the next one whole (on the spare's
 * number); the call after that fails again, queueing none of itself.  The
 * stream goes on each time: the peer gets exactly the two that went. */
IOP_TEST_BOTH(sendfilev_out_of_fds)
{
    iop_loop *l = iop_test_loop(be);
    int fd = make_file();
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    small_bufs(sv, 16 * 1024);
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    unsigned char header[1000];
    fill(header, 82, 0, sizeof header);
    struct iovec h = {header, sizeof header};
    size_t one = sizeof header + FILE_SIZE, total = 2 * one;
    unsigned char *expect = malloc(total), *got = malloc(total);
    CHECK(expect && got);
    for (size_t at = 0; at < total; at += one) {
        memcpy(expect + at, header, sizeof header);
        fill(expect + at + sizeof header, 81, 0, FILE_SIZE);
    }
    struct peer p;
    peer_keep(l, &p, sv[1], got, total);

    rlim_t cur = nofile_exhaust(fd);
    CHECK_EQ(iop_stream_sendfilev(c.s, &h, 1, fd, 0, FILE_SIZE, IOP_SENDFILE_DUP), -EMFILE);
    CHECK_EQ(iop_stream_queued(c.s), 0);
    nofile_restore(cur);
    settle(l, 20);
    CHECK_EQ(p.got, 0);

    int rc = iop_stream_sendfilev(c.s, &h, 1, fd, 0, FILE_SIZE, IOP_SENDFILE_DUP);
    CHECK(rc == 0 || rc == 1);
    note_full(&c, rc);
    WAIT_FOR(l, iop_stream_queued(c.s) == 0, 20000);

    cur = nofile_exhaust(fd);
    rc = iop_stream_sendfilev(c.s, &h, 1, fd, 0, FILE_SIZE, IOP_SENDFILE_DUP);
    CHECK(rc == 0 || rc == 1);
    note_full(&c, rc);
    size_t queued = iop_stream_queued(c.s);
    CHECK(queued > 0); /* the socket was full: the file is kept on the spare */
    CHECK_EQ(iop_stream_sendfilev(c.s, &h, 1, fd, 0, FILE_SIZE, IOP_SENDFILE_DUP), -EMFILE);
    CHECK_EQ(iop_stream_queued(c.s), queued);
    nofile_restore(cur);

    CHECK_OK(iop_stream_shutdown(c.s));
    expect_got(l, &p, got, expect, total);
    CHECK_EQ(c.errs, 0);
    pair_case_end(l, ctx, &c, &p, sv[1], expect, got);
    close(fd);
    iop_test_loop_free(l);
}

/* Small kernel buffers: the range waits for room again and again (on
 * io_uring, a poll request each time) and resumes where it stopped; both the
 * range sent at once and the one queued behind a write. */
IOP_TEST_BOTH(sendfile_small_buffers)
{
    iop_loop *l = iop_test_loop(be);
    int fd = make_file();
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    CHECK(d >= 0);
    sendfile_case(l, kind, d, 7, 3 * MiB, IOP_SENDFILE_DUP, 16 * 1024);
    sendfile_case(l, kind, fd, 65537, 2 * MiB + 3, 0, 16 * 1024);
    close(fd);
    iop_test_loop_free(l);
}

/* A file shorter than the range promised: the bytes it has arrive, then
 * sendfile(2) says 0 and the stream fails with -EIO (and, left open by the
 * user, closes).  queued: behind a write, so the engine sends it, after
 * waiting for room; else at once from the call. */
static void short_file_case(iop_loop *l, enum pair_kind kind, int file_fd, off_t off, int queued)
{
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    unsigned char header[1000];
    fill(header, 82, 0, sizeof header);
    size_t have = FILE_SIZE - (size_t)off, total = sizeof header + have;
    unsigned char *expect = malloc(total), *got = malloc(total);
    CHECK(expect && got);
    memcpy(expect, header, sizeof header);
    fill(expect + sizeof header, 81, (size_t)off, have);
    struct iovec h = {header, sizeof header};
    if (queued)
        CHECK(iop_stream_write(c.s, header, sizeof header) >= 0);
    int rc = iop_stream_sendfilev(c.s, &h, !queued, file_fd, off, have + 4096, 0);
    CHECK(rc == 0 || rc == 1);
    note_full(&c, rc);
    settle(l, 10);
    struct peer p;
    peer_keep(l, &p, sv[1], got, total);
    WAIT_FOR(l, c.errs && c.closes, 20000);
    CHECK_EQ(c.last_err, -EIO);
    expect_got(l, &p, got, expect, total);
    pair_case_end(l, ctx, &c, &p, sv[1], expect, got);
}

IOP_TEST_BOTH(sendfile_short_file)
{
    iop_loop *l = iop_test_loop(be);
    int fd = make_file();
    short_file_case(l, kind, fd, FILE_SIZE - 5000, 0);
    short_file_case(l, kind, fd, 0, 1);
    close(fd);
    iop_test_loop_free(l);
}

/* Closing a stream with an unsent IOP_SENDFILE_CLOSE file closes the file
 * (the fd-leak check proves it), and frees what was queued. */
IOP_TEST_BOTH(sendfile_close_unsent)
{
    iop_loop *l = iop_test_loop(be);
    int fd = make_file();
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    CHECK(iop_stream_write(c.s, "header", 6) >= 0);
    int rc = iop_stream_sendfile(c.s, fd, 0, FILE_SIZE, IOP_SENDFILE_CLOSE);
    CHECK(rc == 0 || rc == 1);
    note_full(&c, rc);
    int fd2 = make_file();
    rc = iop_stream_sendfile(c.s, fd2, 7, FILE_SIZE - 7, IOP_SENDFILE_CLOSE);
    CHECK(rc == 0 || rc == 1);
    note_full(&c, rc);
    settle(l, 10); /* under way: some is in the socket buffer */
    conn_finish(l, ctx, &c);
    CHECK(!fd_is_open(fd2));
    close(sv[1]);
    iop_test_loop_free(l);
}

/* sendfile to a vanished peer: sendfile(2) and splice(2) cannot take
 * MSG_NOSIGNAL, yet SIGPIPE must not kill us. */
IOP_TEST_BOTH(sendfile_to_vanished_peer)
{
    signal(SIGPIPE, SIG_DFL);
    iop_loop *l = iop_test_loop(be);
    int fd = make_file();
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    CHECK_OK(iop_stream_read_start(c.s));
    close(sv[1]);
    WAIT_FOR(l, c.eofs, 5000);
    for (int i = 0; i < 200 && !c.errs; i++) {
        int rc = iop_stream_sendfile(c.s, fd, 0, 256 * KiB, 0);
        CHECK(rc == 0 || rc == 1 || rc == -EPIPE);
        note_full(&c, rc);
        CHECK(iop_loop_run(l, IOP_RUN_NOWAIT) >= 0);
        usleep(500);
    }
    WAIT_FOR(l, c.errs, 2000);
    CHECK(c.last_err == -EPIPE || c.last_err == -ECONNRESET);
    WAIT_FOR(l, c.closes == 1, 5000);
    CHECK_OK(iop_stream_ctx_free(ctx));
    close(fd);
    iop_test_loop_free(l);
}
