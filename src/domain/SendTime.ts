/** `SendTime` as the reference writes it: RFC 3339 with the server's zone offset, e.g. `2023-10-22T22:59:04.069+08:00`. */
const pad = (n: number, w = 2) => String(n).padStart(w, "0")

/** The last one made: sends committed in the same millisecond share it. */
let lastMillis = NaN
let lastText = ""

export const formatSendTime = (millis: number): string => {
  if (millis === lastMillis) return lastText
  lastText = format(millis)
  lastMillis = millis
  return lastText
}

const format = (millis: number): string => {
  const d = new Date(millis)
  const offsetMin = -d.getTimezoneOffset()
  const sign = offsetMin >= 0 ? "+" : "-"
  const abs = Math.abs(offsetMin)
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${
    pad(d.getSeconds())
  }.${pad(d.getMilliseconds(), 3)}${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`
}
