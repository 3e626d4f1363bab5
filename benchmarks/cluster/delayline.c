/*
 * delayline: a one-way delay (with optional jitter) between two network interfaces.
 *
 * This kernel has no netem (CONFIG_NET_SCH_NETEM is not set), so the emulated cluster
 * delays a link in user space instead: frames that arrive on interface IN leave on
 * interface OUT DELAY_US (+ a uniform draw from [-JITTER_US, +JITTER_US]) later; frames
 * that arrive on OUT leave on IN at once. Frames are never reordered (a frame leaves no
 * earlier than the one before it, as on a path whose queueing delay varies), unlike
 * netem's jitter.
 *
 * Both sockets are AF_PACKET with PACKET_VNET_HDR, so segmentation-offloaded frames (up
 * to 64 KiB) pass through whole with their offload metadata, as between two veths.
 *
 * Usage: delayline IN OUT DELAY_US JITTER_US SEED
 * Runs until killed; prints "ready" once both directions forward.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

#define FRAME_MAX (65536 + 64)
#define QUEUE_MAX (1 << 16)

struct frame {
    uint64_t due_ns;
    uint32_t len;
    unsigned char *data;
};

struct direction {
    int rx, tx;
    uint64_t delay_ns, jitter_ns;
    uint64_t seed;
    struct frame queue[QUEUE_MAX];
    uint32_t head, tail; /* frames [head, tail) wait, oldest first */
    uint64_t last_due;
    uint64_t forwarded, dropped;
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t next_random(uint64_t *s) { /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static int open_socket(const char *name) {
    int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (fd < 0) {
        perror("socket");
        exit(1);
    }
    int one = 1; /* offload metadata in a header; never read back what we send */
    if (setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) < 0) {
        perror("setsockopt");
        exit(1);
    }
    int size = 64 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
    struct sockaddr_ll addr;
    memset(&addr, 0, sizeof addr);
    addr.sll_family = AF_PACKET;
    addr.sll_protocol = htons(ETH_P_ALL);
    addr.sll_ifindex = (int)if_nametoindex(name);
    if (addr.sll_ifindex == 0) {
        fprintf(stderr, "delayline: no interface %s\n", name);
        exit(1);
    }
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("bind");
        exit(1);
    }
    struct packet_mreq mreq;
    memset(&mreq, 0, sizeof mreq);
    mreq.mr_ifindex = addr.sll_ifindex;
    mreq.mr_type = PACKET_MR_PROMISC;
    setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq, sizeof mreq);
    return fd;
}

static void send_due(struct direction *d, uint64_t now) {
    while (d->head != d->tail && d->queue[d->head % QUEUE_MAX].due_ns <= now) {
        struct frame *f = &d->queue[d->head % QUEUE_MAX];
        for (;;) {
            ssize_t n = send(d->tx, f->data, f->len, 0);
            if (n >= 0) {
                d->forwarded++;
                break;
            }
            if (errno == EINTR) continue;
            if (errno == ENOBUFS || errno == EAGAIN) { /* the link's queue is full: retry */
                struct timespec pause = {0, 20000};
                nanosleep(&pause, NULL);
                continue;
            }
            d->dropped++; /* a frame the kernel refuses (it would be lost on a wire too) */
            break;
        }
        free(f->data);
        d->head++;
    }
}

static void *forward(void *arg) {
    struct direction *d = arg;
    unsigned char *buf = malloc(FRAME_MAX);
    for (;;) {
        int timeout_ms = -1;
        if (d->head != d->tail) {
            uint64_t due = d->queue[d->head % QUEUE_MAX].due_ns, now = now_ns();
            timeout_ms = due <= now ? 0 : (int)((due - now + 999999) / 1000000);
        }
        struct pollfd p = {d->rx, POLLIN, 0};
        int ready = poll(&p, 1, timeout_ms);
        if (ready < 0 && errno != EINTR) {
            perror("poll");
            exit(1);
        }
        while (ready > 0 && d->tail - d->head < QUEUE_MAX) {
            ssize_t n = recv(d->rx, buf, FRAME_MAX, MSG_DONTWAIT);
            if (n <= 0) break;
            uint64_t now = now_ns(), due = now + d->delay_ns;
            if (d->jitter_ns) {
                int64_t j = (int64_t)(next_random(&d->seed) % (2 * d->jitter_ns + 1));
                due = (uint64_t)((int64_t)due + j - (int64_t)d->jitter_ns);
            }
            if (due < d->last_due) due = d->last_due; /* never reorder */
            d->last_due = due;
            struct frame *f = &d->queue[d->tail % QUEUE_MAX];
            f->data = malloc((size_t)n);
            memcpy(f->data, buf, (size_t)n);
            f->len = (uint32_t)n;
            f->due_ns = due;
            d->tail++;
        }
        send_due(d, now_ns());
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: delayline IN OUT DELAY_US JITTER_US SEED\n");
        return 2;
    }
    uint64_t delay_us = strtoull(argv[3], NULL, 10), jitter_us = strtoull(argv[4], NULL, 10);
    if (jitter_us > delay_us) {
        fprintf(stderr, "delayline: JITTER_US must be <= DELAY_US\n");
        return 2;
    }
    static struct direction out, back;
    int in = open_socket(argv[1]), outside = open_socket(argv[2]);
    out.rx = in;
    out.tx = outside;
    out.delay_ns = delay_us * 1000;
    out.jitter_ns = jitter_us * 1000;
    out.seed = strtoull(argv[5], NULL, 10) * 0x9E3779B97F4A7C15ull + 1;
    back.rx = outside;
    back.tx = in;
    pthread_t a, b;
    pthread_create(&a, NULL, forward, &out);
    pthread_create(&b, NULL, forward, &back);
    printf("ready\n");
    fflush(stdout);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    return 0;
}
