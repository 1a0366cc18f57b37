/**
 * The benchmark driver's HTTP client: keep-alive HTTP/1.1 over plain sockets, one request per
 * connection at a time, connections reused from a free list. The driver shares the server's two
 * cores, so a lean client (what wrk or autocannon do) leaves the CPU to the server being measured;
 * `fetch` spent about three times as much per request here.
 */
import * as Net from "node:net"

export interface Answer {
  readonly status: number
  readonly body: string
}

class Connection {
  readonly socket: Net.Socket
  /** When the last answer arrived: servers close keep-alive connections idle for about 5 s. */
  idleSince = Date.now()
  private buffer: Buffer = Buffer.alloc(0)
  private waiting: { resolve: (a: Answer) => void; reject: (e: unknown) => void } | undefined

  constructor(host: string, port: number, onClose: (c: Connection) => void) {
    this.socket = Net.connect(port, host)
    this.socket.setNoDelay(true)
    this.socket.on("data", (data: Buffer) => {
      this.buffer = this.buffer.length === 0 ? data : Buffer.concat([this.buffer, data])
      this.parse()
    })
    const fail = (error: unknown) => {
      onClose(this)
      this.waiting?.reject(error)
      this.waiting = undefined
    }
    this.socket.on("error", fail)
    this.socket.on("close", () => fail(new Error("connection closed")))
  }

  request(head: string, body: Buffer): Promise<Answer> {
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject }
      this.socket.write(body.length === 0 ? head : Buffer.concat([Buffer.from(head), body]))
    })
  }

  private parse() {
    const end = this.buffer.indexOf("\r\n\r\n")
    if (end < 0) return
    const head = this.buffer.subarray(0, end).toString("latin1")
    const length = /\r\ncontent-length:\s*(\d+)/i.exec(head)
    let body: string
    let rest: number
    if (length !== null) {
      rest = end + 4 + Number(length[1])
      if (this.buffer.length < rest) return
      body = this.buffer.subarray(end + 4, rest).toString()
    } else if (/\r\ntransfer-encoding:\s*chunked/i.test(head)) {
      const last = this.buffer.indexOf("\r\n0\r\n\r\n", end + 2)
      if (last < 0) return
      rest = last + 7
      body = ""
      for (let at = end + 4; at < last + 2;) {
        const lineEnd = this.buffer.indexOf("\r\n", at)
        const size = parseInt(this.buffer.subarray(at, lineEnd).toString("latin1"), 16)
        body += this.buffer.subarray(lineEnd + 2, lineEnd + 2 + size).toString()
        at = lineEnd + 2 + size + 2
      }
    } else {
      rest = end + 4
      body = ""
    }
    this.buffer = this.buffer.subarray(rest)
    this.idleSince = Date.now()
    const waiting = this.waiting!
    this.waiting = undefined
    waiting.resolve({ status: Number(head.slice(9, 12)), body })
  }
}

const IDLE_REUSE_MS = 2_000

export const makeHttpClient = (baseUrl: string) => {
  const url = new URL(baseUrl)
  const free: Array<Connection> = []
  const forget = (c: Connection) => {
    const i = free.indexOf(c)
    if (i >= 0) free.splice(i, 1)
  }
  return {
    post: async (path: string, json: unknown, token?: string): Promise<Answer> => {
      const body: Buffer = Buffer.from(JSON.stringify(json))
      const head =
        `POST ${path} HTTP/1.1\r\nhost: ${url.host}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n${
          token === undefined ? "" : `authorization: Bearer ${token}\r\n`
        }\r\n`
      // A connection idle long enough for the server to be closing it is not reused (the request
      // would race the server's FIN and end in ECONNRESET).
      let connection = free.pop()
      while (connection !== undefined && Date.now() - connection.idleSince > IDLE_REUSE_MS) {
        connection.socket.destroy()
        connection = free.pop()
      }
      connection ??= new Connection(url.hostname, Number(url.port), forget)
      const answer = await connection.request(head, body)
      free.push(connection)
      return answer
    }
  }
}
