/**
 * The ceiling the push benchmark compares against: a plain `ws` broadcast server that persists
 * nothing and checks nothing. `POST /send` with `{to: [client ids], message}` writes the message to
 * those clients' sockets; clients connect to `/?id=<client id>`. Run as its own process.
 */
import * as Http from "node:http"
import { clientSockets } from "./plain-clients.ts"

const port = Number(process.env.PORT ?? 8090)
const server = Http.createServer((req, res) => {
  let body = ""
  req.on("data", (d) => (body += d))
  req.on("end", () => {
    const { to, message } = JSON.parse(body) as { to: Array<string>; message: unknown }
    const frame = JSON.stringify(message)
    for (const id of to) for (const ws of clients.get(id) ?? []) ws.send(frame)
    res.writeHead(200, { "content-type": "application/json" })
    res.end('{"code":0}')
  })
})
const clients = clientSockets(server)
server.listen(port, "127.0.0.1", () => console.log(`ceiling listening on ${port}`))
