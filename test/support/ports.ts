/** Free loopback ports, without importing the app (the global setup uses this before any test runs). */
import * as Net from "node:net"

const handedOut = new Set<number>()

/**
 * A port free right now and not handed out before by this process: a port is free again as soon
 * as it is probed, so two calls before either is bound (a runner port, then an HTTP port) could
 * otherwise get the same one.
 */
export const freePort = async (): Promise<number> => {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = Net.createServer()
      srv.once("error", reject)
      srv.listen(0, "127.0.0.1", () => {
        const port = (srv.address() as Net.AddressInfo).port
        srv.close(() => resolve(port))
      })
    })
    if (handedOut.has(port)) continue
    handedOut.add(port)
    return port
  }
}

/** Whether something accepts TCP connections on `host:port` (within `timeoutMs`). */
export const answers = (port: number, host = "127.0.0.1", timeoutMs = 1000) =>
  new Promise<boolean>((resolve) => {
    const socket = Net.connect({ port, host })
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(timeoutMs, () => done(false))
    socket.once("connect", () => done(true))
    socket.once("error", () => done(false))
  })
