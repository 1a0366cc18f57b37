/** Lists grouped by key, made on first use: sessions per node, connections per node. */
export type Groups<K, V> = Map<K, Array<V>> | undefined

/** Adds `value` to the list of `key` in `groups` (made if undefined); the groups. */
export const addTo = <K, V>(groups: Groups<K, V>, key: K, value: V): Map<K, Array<V>> => {
  const out = groups ?? new Map<K, Array<V>>()
  const list = out.get(key)
  if (list === undefined) out.set(key, [value])
  else list.push(value)
  return out
}
