"""Pure-Python twins of the KV-cache managers (slow, obvious, same ordering as the kernels).

Written for readability: lists, dicts and node objects. Each twin mirrors the public API of
its facade (``admit``, ``grow``, ``free``, ``fork``, ``match_prefix``, ``stats``, ...) and
the exact ordering rules of the kernels:

* free blocks form a stack; block 0 is allocated first; a released run of blocks is pushed
  tail first, so the next allocation reuses its head block first;
* copy-on-write is decided per sequence in batch order;
* radix eviction takes the unlocked leaf with the smallest ``(last_access_s, access_tick)``;
  an access stamps the root->node path with ticks increasing towards the leaf;
* paged with prefix caching (APC, vLLM v1) keeps unreferenced blocks in one free queue
  (a list, head first: initially ``0..N-1``); a release appends a table tail first, a hit
  removes a free block from it, an allocation pops the head and evicts its cached page (and
  the trie below it); cached pages form a trie of one-page nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from servesim.simulator.memory.base import MemoryStats


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(eq=False)
class Node:
    """A radix-tree node: an edge of page keys and the blocks holding those pages."""

    parent: Node | None
    keys: list = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    children: dict = field(default_factory=dict)
    lock_ref: int = 0
    last_access_s: float = 0.0
    access_tick: int = 0


class RefBlockCache:
    """Twin of ``PagedKVCache`` (``radix=False``) and ``RadixKVCache`` (``radix=True``)."""

    def __init__(
        self,
        *,
        capacity_tokens: int,
        block_size_tokens: int,
        max_seqs: int,
        max_seq_len: int,
        watermark_frac: float,
        radix: bool,
        prefix_caching: bool = False,
    ) -> None:
        self.kind = "radix" if radix else "paged"
        self.radix = radix
        self.apc = prefix_caching and not radix
        self.queue: list[int] = list(range(capacity_tokens // block_size_tokens))
        self.node_of: dict[int, Node] = {}
        self.page = block_size_tokens
        self.num_blocks = capacity_tokens // block_size_tokens
        self.capacity_tokens = self.num_blocks * self.page
        self.max_seqs = max_seqs
        self.max_seq_len = max_seq_len
        self.watermark_blocks = int(watermark_frac * self.num_blocks)
        self.max_blocks_per_seq = _ceil_div(max_seq_len, self.page)
        self.free_list = list(range(self.num_blocks - 1, -1, -1))  # end of list = top
        self.ref = [0] * self.num_blocks
        self.in_tree = [False] * self.num_blocks
        self.tables: dict[int, list[int]] = {}
        self.tokens: dict[int, int] = {}
        self.locked: dict[int, Node] = {}
        self.root = Node(parent=None)
        self.num_cached = 0  # blocks in the tree with refcount 0
        self.tick = 0
        self.cow = 0
        self.evicted = 0
        self.query = 0
        self.hit = 0

    # ---------------------------------------------------------------- helpers

    def keys_of(self, block_ids, block_tokens: int, n_tokens: int) -> list:
        if not (self.radix or self.apc) or block_ids is None:
            return []
        ids = [int(x) for x in block_ids]
        p = self.page
        num_pages = min(n_tokens, len(ids) * block_tokens) // p
        if block_tokens == p:
            return ids[:num_pages]
        out = []
        for k in range(num_pages):
            start = k * p
            lo, hi = start // block_tokens, (start + p - 1) // block_tokens
            out.append((start % block_tokens, tuple(ids[lo : hi + 1])))
        return out

    def cached(self) -> int:
        return self.num_cached

    def incref(self, b: int) -> None:
        if self.ref[b] == 0:
            if self.in_tree[b]:
                self.num_cached -= 1
            if self.apc:
                self.queue.remove(b)
        self.ref[b] += 1

    def decref(self, b: int) -> None:
        self.ref[b] -= 1
        if self.ref[b] == 0:
            if self.in_tree[b]:
                self.num_cached += 1
            if self.apc:
                self.queue.append(b)
            elif not self.in_tree[b]:
                self.free_list.append(b)

    def pop(self) -> int:
        if self.apc:
            b = self.queue.pop(0)
            if self.in_tree[b]:
                self.num_cached -= 1
                self.evict_block(b)
        else:
            b = self.free_list.pop()
        self.ref[b] = 1
        return b

    def num_plain_free(self) -> int:
        """Free blocks holding no cached page."""
        return len(self.queue) - self.num_cached if self.apc else len(self.free_list)

    def evict_block(self, b: int) -> None:
        """APC: block ``b``'s page and every page cached below it leave the trie."""
        top = self.node_of[b]
        del top.parent.children[top.keys[0]]
        todo = [top]
        while todo:
            n = todo.pop()
            todo.extend(n.children.values())
            blk = n.blocks[0]
            self.in_tree[blk] = False
            del self.node_of[blk]
            self.evicted += self.page
            if blk != b and self.ref[blk] == 0:
                self.num_cached -= 1

    def insert_apc(self, s: int, keys: list) -> None:
        """APC: cache the seq's full pages, one trie node per page (vLLM's cache_full_blocks)."""
        table = self.tables[s]
        node = self.root
        for i, key in enumerate(keys):
            c = node.children.get(key)
            if c is not None:
                node = c
                continue
            b = table[i]
            if self.in_tree[b]:
                break
            u = Node(parent=node, keys=[key], blocks=[b])
            node.children[key] = u
            self.in_tree[b] = True
            self.node_of[b] = u
            node = u

    def path(self, node: Node) -> list[Node]:
        """Nodes from just below the root down to ``node``."""
        out = []
        while node is not self.root:
            out.append(node)
            node = node.parent
        return out[::-1]

    def touch(self, node: Node, now_s: float) -> None:
        for n in self.path(node):
            self.tick += 1
            n.last_access_s = now_s
            n.access_tick = self.tick

    def lock(self, node: Node, delta: int) -> None:
        for n in self.path(node):
            n.lock_ref += delta

    def match(self, keys: list) -> tuple[Node, int, list[int]]:
        node, i = self.root, 0
        blocks: list[int] = []
        while i < len(keys):
            c = node.children.get(keys[i])
            if c is None:
                break
            j = 0
            while j < len(c.keys) and i < len(keys) and c.keys[j] == keys[i]:
                blocks.append(c.blocks[j])
                i += 1
                j += 1
            node = c
            if j < len(c.keys):
                return node, j, blocks
        return node, 0, blocks

    def split(self, node: Node, j: int) -> Node:
        up = Node(
            parent=node.parent,
            keys=node.keys[:j],
            blocks=node.blocks[:j],
            lock_ref=node.lock_ref,
            last_access_s=node.last_access_s,
            access_tick=node.access_tick,
        )
        node.parent.children[node.keys[0]] = up
        node.keys, node.blocks = node.keys[j:], node.blocks[j:]
        node.parent = up
        up.children[node.keys[0]] = node
        return up

    def all_nodes(self) -> list[Node]:
        out, todo = [], [self.root]
        while todo:
            n = todo.pop()
            out.append(n)
            todo.extend(n.children.values())
        return out

    def evict(self, want: int) -> None:
        freed = 0
        while freed < want:
            leaves = [
                n
                for n in self.all_nodes()
                if n is not self.root and not n.children and n.lock_ref == 0
            ]
            if not leaves:
                return
            best = min(leaves, key=lambda n: (n.last_access_s, n.access_tick))
            freeable = [b for b in best.blocks if self.ref[b] == 0]
            self.num_cached -= len(freeable)
            for b in best.blocks:
                self.in_tree[b] = False
            self.free_list.extend(reversed(freeable))
            freed += len(freeable)
            self.evicted += len(best.blocks) * self.page
            del best.parent.children[best.keys[0]]

    def insert(self, s: int, keys: list, now_s: float, dedup: bool = False) -> Node:
        table = self.tables[s]
        n = len(keys)
        node, i = self.root, 0
        while i < n:
            c = node.children.get(keys[i])
            if c is None:
                k = i
                while k < n and not self.in_tree[table[k]]:
                    k += 1
                if k > i:
                    u = Node(parent=node, keys=keys[i:k], blocks=table[i:k])
                    node.children[keys[i]] = u
                    for b in table[i:k]:
                        self.in_tree[b] = True
                    node = u
                break
            j = 0
            while j < len(c.keys) and i < n and c.keys[j] == keys[i]:
                if dedup and table[i] != c.blocks[j]:
                    old, table[i] = table[i], c.blocks[j]
                    self.incref(c.blocks[j])
                    self.decref(old)
                i += 1
                j += 1
            if j < len(c.keys):
                c = self.split(c, j)
            node = c
        if node is not self.root:
            self.touch(node, now_s)
        return node

    def cache_computed(self, seq_id, *, now_s, block_ids, block_tokens=1, total_tokens) -> None:
        if block_ids is None or not (self.radix or self.apc):
            return
        keys = self.keys_of(block_ids, block_tokens, min(total_tokens, self.tokens[seq_id]))
        keys = keys[: len(self.tables[seq_id])]
        if not keys:
            return
        if self.apc:
            self.insert_apc(seq_id, keys)
            return
        node = self.insert(seq_id, keys, now_s, dedup=True)
        old = self.locked[seq_id]
        if node is old or node is self.root:
            return
        if old is self.root or old in self.path(node):
            self.lock(node, 1)
            self.lock(old, -1)
            self.locked[seq_id] = node

    # ---------------------------------------------------------------- interface

    @property
    def num_free_slots(self) -> int:
        free = self.num_plain_free() + (self.cached() if (self.radix or self.apc) else 0)
        return free * self.page

    def fits_ever(self, prompt_tokens: int, final_tokens: int) -> bool:
        return (
            prompt_tokens + 1 <= self.max_seq_len
            and final_tokens <= self.max_seq_len
            and _ceil_div(max(final_tokens, prompt_tokens + 1), self.page) + self.watermark_blocks <= self.num_blocks
        )

    def _capped_keys(self, block_ids, block_tokens: int, prompt_tokens: int) -> list:
        keys = self.keys_of(block_ids, block_tokens, prompt_tokens)
        return keys[: (prompt_tokens - 1) // self.page]

    def match_prefix(self, block_ids, block_tokens: int, prompt_tokens: int) -> int:
        return len(self.match(self._capped_keys(block_ids, block_tokens, prompt_tokens))[2]) * (
            self.page
        )

    def admit(self, seq_id, *, prompt_tokens, final_tokens, block_ids=None, block_tokens=1, now_s):
        assert seq_id not in self.tables
        keys = self._capped_keys(block_ids, block_tokens, prompt_tokens)
        node, j, blocks = self.match(keys)
        m = len(blocks)
        cached_hit = sum(1 for b in blocks if self.ref[b] == 0)
        need = _ceil_div(prompt_tokens, self.page) - m
        if self.num_plain_free() + self.cached() - cached_hit - need < self.watermark_blocks:
            return None
        if m > 0 and self.apc:
            node = self.root
        elif m > 0:
            if j > 0:
                node = self.split(node, j)
            self.lock(node, 1)
            self.touch(node, now_s)
        else:
            node = self.root
        for b in blocks:
            self.incref(b)
        self.tables[seq_id] = list(blocks)
        self.tokens[seq_id] = m * self.page
        self.locked[seq_id] = node
        self.query += prompt_tokens
        self.hit += m * self.page
        return m * self.page

    def _plan(self, seq_ids, new_totals) -> tuple[int, list[bool]]:
        copied: dict[int, int] = {}  # block -> CoW copies already planned in this batch
        need, cow = 0, []
        for s, new in zip(seq_ids, new_totals, strict=True):
            s, new = int(s), int(new)
            cur = self.tokens[s]
            if new <= cur:
                cow.append(False)
                continue
            want = _ceil_div(new, self.page)
            assert want <= self.max_blocks_per_seq
            table = self.tables[s]
            last = table[-1] if table else -1
            c = cur % self.page != 0 and self.ref[last] - copied.get(last, 0) > 1
            if c:
                copied[last] = copied.get(last, 0) + 1
                need += 1
            cow.append(c)
            need += want - len(table)
        return need, cow

    def slots_needed(self, seq_ids, new_totals) -> int:
        return self._plan(seq_ids, new_totals)[0] * self.page

    def grow(self, seq_ids, new_totals, *, now_s) -> bool:
        need, cow = self._plan(seq_ids, new_totals)
        if self.apc:
            if need > len(self.queue):
                return False
        elif need > len(self.free_list):
            if not self.radix or len(self.free_list) + self.cached() < need:
                return False
            self.evict(need - len(self.free_list))
        for s, new, c in zip(seq_ids, new_totals, cow, strict=True):
            s, new = int(s), int(new)
            if new <= self.tokens[s]:
                continue
            table = self.tables[s]
            if c:
                old = table[-1]
                table[-1] = self.pop()
                self.decref(old)
                self.cow += 1
            while len(table) < _ceil_div(new, self.page):
                table.append(self.pop())
            self.tokens[s] = new
        return True

    def free(
        self, seq_id, *, now_s, finished=True, block_ids=None, block_tokens=1, total_tokens=0
    ) -> None:
        table = self.tables[seq_id]
        keys = self.keys_of(block_ids, block_tokens, min(total_tokens, self.tokens[seq_id]))
        keys = keys[: len(table)]
        if keys and self.apc:
            self.insert_apc(seq_id, keys)
        elif keys:
            self.insert(seq_id, keys, now_s)
        self.lock(self.locked.pop(seq_id), -1)
        for b in reversed(table):
            self.decref(b)
        del self.tables[seq_id]
        del self.tokens[seq_id]

    def fork(self, parent_seq_id, child_seq_id, *, now_s) -> bool:
        table = self.tables[parent_seq_id]
        for b in table:
            self.incref(b)
        self.tables[child_seq_id] = list(table)
        self.tokens[child_seq_id] = self.tokens[parent_seq_id]
        self.locked[child_seq_id] = self.locked[parent_seq_id]
        self.lock(self.locked[child_seq_id], 1)
        return True

    def block_table(self, seq_id) -> list[int]:
        return list(self.tables[seq_id])

    def is_live(self, seq_id) -> bool:
        return seq_id in self.tables

    def num_tokens(self, seq_id) -> int:
        return self.tokens[seq_id]

    @property
    def free_block_ids(self) -> list[int]:
        if self.apc:
            return list(self.queue)
        return self.free_list[::-1]

    def stats(self, *, min_pending_slots: int = 0) -> MemoryStats:
        filled = [0] * self.num_blocks
        for s, table in self.tables.items():
            for i, b in enumerate(table):
                filled[b] = max(filled[b], min(self.page, self.tokens[s] - i * self.page))
        used = [b for b in range(self.num_blocks) if self.ref[b] > 0]
        return MemoryStats(
            capacity_slots=self.capacity_tokens,
            token_slots=sum(filled[b] for b in used),
            reserved_slots=0,
            internal_frag_slots=sum(self.page - filled[b] for b in used),
            external_frag_slots=0,
            cached_slots=self.cached() * self.page,
            free_slots=self.num_plain_free() * self.page,
            prefix_query_tokens=self.query,
            prefix_hit_tokens=self.hit,
            evicted_tokens=self.evicted,
            num_cow_copies=self.cow,
        )

    @property
    def num_tree_nodes(self) -> int:
        return len(self.all_nodes()) - 1

    @property
    def tree_tokens(self) -> int:
        return sum(len(n.blocks) for n in self.all_nodes()) * self.page


class RefContiguous:
    """Twin of ``ContiguousKVCache``: a sorted list of free ``[start, length]`` extents."""

    kind = "contiguous"
    block_size_tokens = 1

    def __init__(self, *, capacity_tokens, max_seqs, max_seq_len, reservation, placement):
        self.capacity_tokens = capacity_tokens
        self.max_seq_len = max_seq_len
        self.reservation = reservation
        self.best_fit = placement == "best_fit"
        self.extents = [[0, capacity_tokens]]
        self.seqs: dict[int, dict] = {}  # seq -> start, res, tokens, final
        self.query = 0
        self.copies = 0

    def reservation_slots(self, prompt_tokens, final_tokens) -> int:
        if self.reservation == "max":
            return self.max_seq_len
        if self.reservation == "pow2":
            size = 1
            while size < final_tokens:
                size *= 2
            return min(size, self.max_seq_len)
        return final_tokens

    @property
    def num_free_slots(self) -> int:
        return sum(n for _, n in self.extents)

    @property
    def free_extents(self) -> list[tuple[int, int]]:
        return [(s, n) for s, n in self.extents]

    def fits_ever(self, prompt_tokens, final_tokens) -> bool:
        res = self.reservation_slots(prompt_tokens, final_tokens)
        return final_tokens <= res <= self.capacity_tokens

    def match_prefix(self, block_ids, block_tokens, prompt_tokens) -> int:
        return 0

    def _reserve(self, seq_id, size, tokens, final) -> bool:
        fits = [e for e in self.extents if e[1] >= size]
        if not fits:
            return False
        ext = min(fits, key=lambda e: (e[1], e[0])) if self.best_fit else fits[0]
        self.seqs[seq_id] = {"start": ext[0], "res": size, "tokens": tokens, "final": final}
        ext[0] += size
        ext[1] -= size
        if ext[1] == 0:
            self.extents.remove(ext)
        return True

    def admit(self, seq_id, *, prompt_tokens, final_tokens, block_ids=None, block_tokens=1, now_s):
        size = self.reservation_slots(prompt_tokens, final_tokens)
        if size < prompt_tokens or not self._reserve(seq_id, size, 0, final_tokens):
            return None
        self.query += prompt_tokens
        return 0

    def slots_needed(self, seq_ids, new_totals) -> int:
        return 0

    def grow(self, seq_ids, new_totals, *, now_s) -> bool:
        pairs = [(int(s), int(n)) for s, n in zip(seq_ids, new_totals, strict=True)]
        if any(n > self.seqs[s]["res"] for s, n in pairs):
            return False
        for s, n in pairs:
            self.seqs[s]["tokens"] = max(self.seqs[s]["tokens"], n)
        return True

    def free(
        self, seq_id, *, now_s, finished=True, block_ids=None, block_tokens=1, total_tokens=0
    ) -> None:
        seq = self.seqs.pop(seq_id)
        self.extents.append([seq["start"], seq["res"]])
        self.extents.sort()
        merged: list[list[int]] = []
        for start, n in self.extents:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1][1] += n
            else:
                merged.append([start, n])
        self.extents = merged

    def cache_computed(self, seq_id, *, now_s, block_ids, block_tokens=1, total_tokens) -> None:
        """Contiguous caches no prefixes."""

    def fork(self, parent_seq_id, child_seq_id, *, now_s) -> bool:
        p = self.seqs[parent_seq_id]
        ok = self._reserve(child_seq_id, p["res"], p["tokens"], p["final"])
        self.copies += ok
        return ok

    def region(self, seq_id) -> tuple[int, int]:
        return self.seqs[seq_id]["start"], self.seqs[seq_id]["res"]

    def is_live(self, seq_id) -> bool:
        return seq_id in self.seqs

    def num_tokens(self, seq_id) -> int:
        return self.seqs[seq_id]["tokens"]

    def block_table(self, seq_id) -> list[int]:
        seq = self.seqs[seq_id]
        return list(range(seq["start"], seq["start"] + seq["tokens"]))

    def stats(self, *, min_pending_slots: int = 0) -> MemoryStats:
        tokens = reserved = internal = 0
        for seq in self.seqs.values():
            useful = min(seq["final"], seq["res"])
            fut = max(useful - seq["tokens"], 0)
            tokens += seq["tokens"]
            reserved += fut
            internal += seq["res"] - seq["tokens"] - fut
        external = sum(n for _, n in self.extents if n < min_pending_slots)
        return MemoryStats(
            capacity_slots=self.capacity_tokens,
            token_slots=tokens,
            reserved_slots=reserved,
            internal_frag_slots=internal,
            external_frag_slots=external,
            cached_slots=0,
            free_slots=self.num_free_slots - external,
            prefix_query_tokens=self.query,
            prefix_hit_tokens=0,
            evicted_tokens=0,
            num_cow_copies=self.copies,
        )


def make_ref(
    kind: str,
    *,
    capacity_tokens,
    block_size_tokens=16,
    max_seqs,
    max_seq_len,
    reservation="max",
    placement="first_fit",
    watermark_frac=0.01,
    prefix_caching=False,
):
    """Twin of :func:`simulator.memory.make_kv_manager` (no validation)."""
    if kind == "contiguous":
        return RefContiguous(
            capacity_tokens=capacity_tokens,
            max_seqs=max_seqs,
            max_seq_len=max_seq_len,
            reservation=reservation,
            placement=placement,
        )
    return RefBlockCache(
        capacity_tokens=capacity_tokens,
        block_size_tokens=block_size_tokens,
        max_seqs=max_seqs,
        max_seq_len=max_seq_len,
        watermark_frac=watermark_frac,
        radix=kind == "radix",
        prefix_caching=prefix_caching,
    )
