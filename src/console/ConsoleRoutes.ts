/**
 * `GET /console`: the web console, three static files read once at start and served as they are
 * (no build step). The page calls the documented API from the browser; it signs in with a pasted
 * token, or mints one through `inner/get_token` when QUICKIM_CONSOLE_SIGN_IN lets the page call
 * it (src/access/Access.ts).
 */
import * as Layer from "effect/Layer"
import * as HttpRouter from "effect/http/HttpRouter"
import * as HttpServerResponse from "effect/http/HttpServerResponse"
import * as Fs from "node:fs"

const file = (name: string) => Fs.readFileSync(new URL(`./${name}`, import.meta.url), "utf8")

const FILES: ReadonlyArray<readonly [`/${string}`, string, string]> = [
  ["/console", "index.html", "text/html; charset=utf-8"],
  ["/console/console.js", "console.js", "text/javascript; charset=utf-8"],
  ["/console/console.css", "console.css", "text/css; charset=utf-8"]
]

export const ConsoleRoutes = FILES.map(([path, name, contentType]) => {
  const body = file(name)
  return HttpRouter.add(
    "GET",
    path,
    HttpServerResponse.text(body, { contentType, headers: { "cache-control": "no-cache" } })
  )
}).reduce((all, route) => Layer.merge(all, route))
