/* dgram_int.h - what the datagram core and its two IO engines share.
 *
 * dgram.c           handles, the send queue, deferred work, closing
 * dgram_ready.c     readiness engine (select/poll/epoll): recvmmsg/sendmmsg
 * dgram_complete.c  completion engine (io_uring): recvmsg/sendmsg requests
 */
#ifndef IOP_DGRAM_INT_H
#define IOP_DGRAM_INT_H

#include <sys/socket.h>
#include <sys/uio.h>

#include "ioplex/stream.h"

struct iop__dgram_engine;

#define IOP_DGRAM_MAX    65507u /* largest UDP payload over IPv4 */
#define DGRAM_SEND_BATCH 64     /* datagrams per sendmmsg */

/* One datagram to send, copied.  Readiness: queued until a sendmmsg takes
 * it.  Completion: owned by its sendmsg request until the callback. */
struct dsend {
    iop_op op; /* first: the op pointer is the struct pointer */
    iop_dgram *d;
    struct dsend *next, *prev;
    struct msghdr msg;
    struct iovec iov;
    struct sockaddr_storage to;
    size_t len;
    char data[];
};

/* Readiness: one recvmmsg worth of datagrams.  count were received by the
 * last call, next is the first not yet delivered (more than zero left when
 * reading stopped inside on_recv; they wait for recv_start). */
struct rbatch {
    unsigned count, next;
    struct mmsghdr *msgs;
    struct iovec *iov;
    struct sockaddr_storage *from;
    char *buf; /* batch * max_size bytes */
};

enum { SLOT_IDLE, SLOT_ARMED, SLOT_HELD };

/* Completion: one recvmsg request with its own buffer and address. */
struct dslot {
    iop_op op; /* first: the op pointer is the struct pointer */
    iop_dgram *d;
    struct dslot *next; /* held list */
    int state;          /* SLOT_* */
    int res;            /* SLOT_HELD: the datagram's length */
    struct msghdr msg;
    struct iovec iov;
    struct sockaddr_storage from;
};

#define DF_READING    0x01u /* the user wants on_recv */
#define DF_CLOSING    0x02u
#define DF_FAILED     0x04u /* err holds the error; reading has stopped */
#define DF_DONE       0x08u /* fd closed, on_close owed */
#define DF_IN_CB      0x10u /* receive memory lent to on_recv: do not free it */
#define DF_WBLOCKED   0x20u /* readiness: sendmmsg said EAGAIN, wait for IOP_WRITE */
#define DF_READ_AGAIN 0x40u /* readiness: read before the next wait */

struct iop_dgram {
    void *data;
    iop_loop *loop;
    struct iop_dgram_config cfg;
    int fd;
    const struct iop__dgram_engine *eng; /* chosen once, by the loop's caps */
    unsigned flags;
    int err;
    uint64_t dropped;
    iop_defer defer;
    struct dsend *shead, *stail; /* not yet handed to the kernel */
    size_t queued;               /* bytes queued or in flight */

    /* readiness */
    iop_io io;
    struct rbatch *rb;

    /* completion */
    struct dslot *slots; /* cfg.batch of them */
    char *bufs;
    struct dslot *held_head, *held_tail; /* received while stopped */
    unsigned recv_inflight;
    struct dsend *sflight; /* sendmsg requests in flight */
    unsigned send_inflight;
};

/* dgram.c */
void iop__dgram_pend(iop_dgram *d);
void iop__dgram_deliver(iop_dgram *d, size_t n, const char *buf,
                        const struct sockaddr_storage *from, socklen_t fromlen);
void iop__dgram_fail(iop_dgram *d, int err);
int iop__dgram_transient(int err);
struct dsend *iop__dgram_pop(iop_dgram *d);
void iop__dgram_sent(iop_dgram *d, struct dsend *s);
void iop__dgram_done(iop_dgram *d);

static inline int iop__dgram_reading(const iop_dgram *d)
{
    return (d->flags & (DF_READING | DF_CLOSING | DF_FAILED)) == DF_READING;
}

/* One table per way of doing IO, as for streams: dgram.c calls the engine
 * through d->eng and never asks which one it has. */
struct iop__dgram_engine {
    const char *name;
    /* The handle is new: 0 or -errno (fd not closed). */
    int (*open)(iop_dgram *d);
    /* DF_READING was just set: 0 or -errno. */
    int (*recv_start)(iop_dgram *d);
    /* DF_READING was just cleared. */
    void (*recv_stop)(iop_dgram *d);
    /* Deferred work on an open handle (d->defer). */
    void (*pending)(iop_dgram *d);
    /* DF_CLOSING was just set and the queue dropped: stop IO, then
     * iop__dgram_done() once nothing of the handle's is in the kernel. */
    void (*close)(iop_dgram *d);
};

extern const struct iop__dgram_engine iop__dgram_ready;    /* dgram_ready.c */
extern const struct iop__dgram_engine iop__dgram_complete; /* dgram_complete.c */

#endif
