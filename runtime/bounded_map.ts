/**
 * A Map that holds at most `capacity` entries: adding one more evicts the oldest insertion. The services keep
 * their state in memory with these, so memory stays bounded however long a load test runs.
 */
export class BoundedMap<K, V> {
  readonly #map = new Map<K, V>();
  constructor(readonly capacity: number) {
    if (!(capacity >= 1)) throw new Error("capacity must be at least 1");
  }
  get size(): number {
    return this.#map.size;
  }
  get(key: K): V | undefined {
    return this.#map.get(key);
  }
  has(key: K): boolean {
    return this.#map.has(key);
  }
  /** Sets the value; returns the evicted [key, value] when the map was full. */
  set(key: K, value: V): [K, V] | undefined {
    if (this.#map.has(key)) {
      this.#map.set(key, value);
      return undefined;
    }
    this.#map.set(key, value);
    if (this.#map.size <= this.capacity) return undefined;
    const oldest = this.#map.entries().next().value as [K, V];
    this.#map.delete(oldest[0]);
    return oldest;
  }
  delete(key: K): boolean {
    return this.#map.delete(key);
  }
  /** Entries from the newest to the oldest. */
  *newestFirst(): IterableIterator<[K, V]> {
    const entries = [...this.#map.entries()];
    for (let i = entries.length - 1; i >= 0; i--) yield entries[i];
  }
  values(): IterableIterator<V> {
    return this.#map.values();
  }
}
