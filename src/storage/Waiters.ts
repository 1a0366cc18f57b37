/**
 * Callbacks of what is waiting right now (one per send in flight), in a doubly linked list rather
 * than a `Set`. A long-lived `Set` or `Map` that entries come and go through keeps every entry it
 * ever held reachable for V8's young-generation collections: each growth or compaction leaves the
 * old table behind, still pointing at its entries and at its successor, and once one such table is
 * in the old generation the whole chain is a root until the next full collection. Whatever the
 * callbacks hold (a request, its answer, its message) was then promoted and piled up as garbage
 * in the old generation (bench/RESULTS.md, "Sends kept alive by a Set"). A removed node keeps no
 * link, so nothing outlives its wait.
 */

interface Node {
  callback: (() => void) | undefined
  prev: Node | undefined
  next: Node | undefined
}

export class Waiters {
  private head: Node | undefined = undefined
  private count = 0

  get size(): number {
    return this.count
  }

  /** Adds `callback`; the returned function takes it back (again: nothing). */
  add(callback: () => void): () => void {
    const node: Node = { callback, prev: undefined, next: this.head }
    if (this.head !== undefined) this.head.prev = node
    this.head = node
    this.count++
    return () => this.unlink(node)
  }

  /** Takes every callback out (the list is empty afterwards) and calls each once. */
  callAll(): void {
    const called: Array<() => void> = []
    while (this.head !== undefined) {
      called.push(this.head.callback!)
      this.unlink(this.head)
    }
    for (const callback of called) callback()
  }

  private unlink(node: Node): void {
    if (node.callback === undefined) return
    if (node.prev !== undefined) node.prev.next = node.next
    else this.head = node.next
    if (node.next !== undefined) node.next.prev = node.prev
    node.callback = undefined
    node.prev = undefined
    node.next = undefined
    this.count--
  }
}
