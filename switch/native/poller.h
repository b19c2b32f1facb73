/*
 * poller: the batched reader behind createPoller, shared by poller.c (the JS object, its
 * lifecycle and the event-loop wakeups) and poller_read.c (one batch of reads).
 *
 * Rules (the contract switch/native-io.ts documents):
 * - The uv_poll_t handle exists only while the poller is started: start() allocates and
 *   initialises one, stop() uv_close()s it. libuv's uv_poll_stop/uv_close remove the fd
 *   number from epoll; doing that while the number still belongs to us (not after a later
 *   close + reuse of the number by some other socket) is why handles are never kept around.
 * - close(fd) from this addon stops every poller on that fd BEFORE closing it; closing a
 *   polled fd behind the addon's back (fs.closeSync) is not supported.
 * - While started, the poller object holds a strong reference to itself (so a started poller
 *   is never garbage collected); the slab, lens/ips/ports arrays and the callback are kept
 *   alive by a hidden property of the poller object. stop() turns the self-reference weak,
 *   so an unreachable stopped poller (and everything it holds) is collected; its finalizer
 *   frees the native state. A callback that captures its own poller therefore leaks nothing.
 * - On each wakeup one batch (up to maxBatch frames) is read; the rest waits for the next
 *   loop turn (the fd is level-triggered), so one busy port cannot starve the others.
 * - Read errors other than EAGAIN end the batch and are counted (stats()); they never throw
 *   from a wakeup. When libuv reports POLLERR (it stops the watcher itself) the error is
 *   consumed by a read; if the fd is still in an error state afterwards (a TAP whose device
 *   was deleted, a closed fd) the poller stops for good (stats().dead), otherwise (a packet
 *   socket whose link went down: ENETDOWN once) it keeps polling. start() on a dead poller
 *   throws; poll() on it still tries to read (and returns 0).
 * - Frames longer than the slot (slotSize - headroom) are dropped and counted as truncated.
 * - Pollers belong to their environment (addon_t.pollers): a worker's pollers are its own.
 */
#ifndef VNSNAP_POLLER_H
#define VNSNAP_POLLER_H

#include <netinet/in.h>
#include <node_api.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <uv.h>

#include "addon.h"
#include "offload.h"

#define MAX_BATCH 1024
/* A wakeup whose reads fail this many times in a row (no frame read) stops the poller. */
#define MAX_CONSECUTIVE_ERRORS 64

enum { KIND_FRAMES = 0, KIND_UDP = 1, KIND_VNET = 2 };
#define GRO_CTRL_LEN CMSG_SPACE(sizeof(int))
/* Entries one received buffer may yield (UDP GSO allows up to 128 segments per send). */
#define GRO_MAX_ENTS 256

typedef struct poller {
  napi_env env;
  addon_t *addon;
  struct poller *next;
  uv_poll_t *h; /* non-NULL exactly while started */
  int fd;
  int kind;
  int is_socket;
  uint8_t *slab;
  uint32_t slot, headroom, max_batch;
  uint32_t *lens, *ips, *ports;
  napi_ref self_ref; /* strong while started */
  napi_ref cb_ref;   /* weak: the hidden property keeps the callback alive */
  napi_async_context actx;
  struct mmsghdr *msgs;
  struct iovec *iov;
  struct sockaddr_in *addrs;
  /* vnet TAPs and GRO sockets: a virtio_net_hdr per frame/entry; GRO: entry offsets/segments */
  uint8_t *meta;
  uint32_t *offs, *segs;
  uint32_t max_entries;
  int gro;
  uint8_t *ctrl;
  ofl_entry_t *ents;
  double gso_drops, gro_dropped;
  int in_cb;
  int fd_closed; /* closed through the addon's close() */
  int dead;      /* stopped for good after a persistent error */
  int consecutive_errors;
  int last_errno;
  double frames, batches, truncated, errors, wakeups;
} poller_t;


/* Read one batch into the slab (poller_read.c). Returns the number of frames/entries
 * delivered in slots 0..n-1, and counts frames, batches, errors and drops. */
uint32_t poller_read_batch(poller_t *p);

#endif
