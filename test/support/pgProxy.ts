/**
 * A TCP proxy in front of the real PostgreSQL server that can cut a connection at the worst
 * moment: right after the server answered a given statement, before the client hears the answer.
 * The statement has committed (autocommit) but the client cannot know: an unknown outcome.
 */
import * as Net from "node:net"
import { freePort } from "./process.ts"

export interface PgProxy {
  readonly port: number
  /** The next connection that sends `text` (in a Parse or Query message) is cut when the server answers. */
  readonly cutAfter: (text: string) => void
  /** Connections cut so far. */
  readonly cuts: () => number
  readonly close: () => Promise<void>
}

export const startPgProxy = async (target: { readonly host: string; readonly port: number }): Promise<PgProxy> => {
  let armed: string | undefined = undefined
  let cuts = 0
  const sockets = new Set<Net.Socket>()
  const server = Net.createServer((client) => {
    const upstream = Net.connect(target.port, target.host)
    sockets.add(client)
    sockets.add(upstream)
    let cutting = false
    const end = () => {
      client.destroy()
      upstream.destroy()
      sockets.delete(client)
      sockets.delete(upstream)
    }
    client.on("data", (data) => {
      if (armed !== undefined && data.includes(armed)) {
        armed = undefined
        cutting = true
      }
      upstream.write(data)
    })
    upstream.on("data", (data) => {
      if (cutting) {
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
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve))
  return {
    port,
    cutAfter: (text) => (armed = text),
    cuts: () => cuts,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      })
  }
}
