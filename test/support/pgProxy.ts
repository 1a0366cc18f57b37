/**
 * A TCP proxy in front of the real PostgreSQL server that can cut a connection at the worst
 * moment: right after the server answered a given statement, before the client hears the answer.
 * The statement has committed (autocommit) but the client cannot know: an unknown outcome.
 */
import * as Net from "node:net"
import { freePort } from "./process.ts"

export interface PgProxy {
  readonly port: number
  /** `url` (a database on the proxied server) through the proxy. */
  readonly via: (url: string) => string
  /**
   * The next connection that sends `text` (in a Parse, Bind or Query message) is cut when the server
   * answers; `onCut` runs first (a test kills the client's process there, before it can hear a thing).
   */
  readonly cutAfter: (text: string, onCut?: () => void) => void
  /** Connections cut so far. */
  readonly cuts: () => number
  readonly close: () => Promise<void>
}

/** A proxy in front of the server of `url` (a PostgreSQL URL), or of `host`:`port`. */
export const startPgProxy = async (
  server: string | { readonly host: string; readonly port: number }
): Promise<PgProxy> => {
  const target = typeof server === "string"
    ? { host: new URL(server).hostname, port: Number(new URL(server).port || 5432) }
    : server
  let armed: string | undefined = undefined
  let beforeCut: (() => void) | undefined = undefined
  let cuts = 0
  const sockets = new Set<Net.Socket>()
  const listener = Net.createServer((client) => {
    const upstream = Net.connect(target.port, target.host)
    sockets.add(client)
    sockets.add(upstream)
    let cutting: (() => void) | undefined = undefined
    const end = () => {
      client.destroy()
      upstream.destroy()
      sockets.delete(client)
      sockets.delete(upstream)
    }
    client.on("data", (data) => {
      if (armed !== undefined && data.includes(armed)) {
        armed = undefined
        cutting = beforeCut ?? (() => {})
        beforeCut = undefined
      }
      upstream.write(data)
    })
    upstream.on("data", (data) => {
      if (cutting !== undefined) {
        cutting()
        cuts++
        return end()
      }
      client.write(data)
    })
    client.on("close", end)
    upstream.on("close", end)
    client.on("error", end)
    upstream.on("error", end)
  })
  const port = await freePort()
  await new Promise<void>((resolve) => listener.listen(port, "127.0.0.1", resolve))
  return {
    port,
    via: (url) => {
      const through = new URL(url)
      through.host = `127.0.0.1:${port}`
      return through.toString()
    },
    cutAfter: (text, onCut) => {
      armed = text
      beforeCut = onCut
    },
    cuts: () => cuts,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy()
        listener.close(() => resolve())
      })
  }
}
