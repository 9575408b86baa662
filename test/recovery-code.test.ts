/**
 * The recovery code R (src/programs/escrow/recoveryCode.ts): BIP39's standard English vectors and
 * word list, forgiving input (case, whitespace, 4-letter prefixes), wrong counts, and the
 * property that any single-word typo is detected and its position named — by the word list, by
 * the checksum, or (when the typo is a valid word that passes the checksum) by nearbyCodes
 * holding the true code. Messages name positions only, never a word.
 */
import { describe, expect, it } from "@effect/vitest"
import { createHash } from "node:crypto"
import { entropyToMnemonic, validateMnemonic } from "@scure/bip39"
import { wordlist } from "@scure/bip39/wordlists/english.js"
import { FastCheck, Redacted } from "effect"
import {
  checkRecoveryCode,
  type CodeCheck,
  formatForPaper,
  generateRecoveryCode,
  nearbyCodes,
  RECOVERY_CODE_WORDS,
  WORDLIST_SHA256
} from "../src/programs/escrow/recoveryCode.js"

const PROP_SEED = { seed: Number(process.env["PROP_SEED"] ?? 1313) }

/** The Trezor reference vectors (python-mnemonic vectors.json), 128-bit entropy. */
const VECTORS: ReadonlyArray<readonly [string, string]> = [
  ["00000000000000000000000000000000", "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"],
  ["7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f", "legal winner thank year wave sausage worth useful legal winner thank yellow"],
  ["80808080808080808080808080808080", "letter advice cage absurd amount doctor acoustic avoid letter advice cage above"],
  ["ffffffffffffffffffffffffffffffff", "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo wrong"],
  ["9e885d952ad362caeb4efe34a8e91bd2", "ozone drill grab fiber curtain grace pudding thank cruise elder eight picnic"],
  ["c0ba5a8e914111210f2bd131f3d5e08d", "scheme spot photo card baby mountain device kick cradle pact join borrow"],
  ["f30f8c1da665478f49b001d94c5fc452", "vessel ladder alter error federal sibling chat ability sun glass valve picture"]
]
const LEGAL = VECTORS[1]![1]

/** Every message shape checkRecoveryCode may produce, positions abstracted: nothing else can appear. */
const TEMPLATES = new Set([
  "a recovery code has N words; got N",
  "a recovery code has N words; this input is far too long",
  "word N is not a recovery-code word",
  "words LIST are not recovery-code words",
  "word N is probably wrong: the code's checksum fails",
  "the code's checksum fails: one of words LIST is likely wrong",
  "the code's checksum fails: check every word, and the order of the words"
])
const shape = (m: string) => m.replace(/\d+/g, "N").replace(/N(?:, N)* and N/g, "LIST")
const problemOf = (r: CodeCheck) => {
  if (r._tag !== "Problem") throw new Error("expected a Problem")
  expect(TEMPLATES.has(shape(r.message)), r.message).toBe(true)
  return r
}
const okOf = (r: CodeCheck) => {
  if (r._tag !== "Ok") throw new Error(`expected Ok, got: ${r.message}`)
  return Redacted.value(r.canonical)
}

/** Optimal-string-alignment distance, written independently of the module's. */
const osa = (a: string, b: string): number => {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)))
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i]![j] = Math.min(d[i]![j]!, d[i - 2]![j - 2]! + 1)
    }
  }
  return d[a.length]![b.length]!
}

describe("word list and standard vectors", () => {
  it("the English list is bitcoin/bips english.txt: SHA-256 as in the reference, 2048 words, unique in four letters", () => {
    expect(createHash("sha256").update(wordlist.join("\n") + "\n").digest("hex")).toBe(WORDLIST_SHA256)
    expect(WORDLIST_SHA256).toBe("2f5eed53a4727b4bf8880d8f3f199efc90e58503646d9ff8eff3a2ed3b24dbda")
    expect(wordlist.length).toBe(2048)
    expect(new Set(wordlist.map((w) => w.slice(0, 4))).size).toBe(2048)
  })

  it.each(VECTORS)("vector %s: the library encodes it, the check accepts it as canonical", (entropy, words) => {
    expect(entropyToMnemonic(Buffer.from(entropy, "hex"), wordlist)).toBe(words)
    expect(okOf(checkRecoveryCode(words))).toBe(words)
  })

  it("the checksum is checked: the last word of a vector swapped for its neighbour in the list fails", () => {
    for (const [, words] of VECTORS) {
      const w = words.split(" ")
      const last = wordlist.indexOf(w[11]!)
      // 4 checksum bits live in the last word: changing its low bits keeps the entropy's top and breaks the checksum
      const wrong = [...w.slice(0, 11), wordlist[last ^ 1]!].join(" ")
      expect(validateMnemonic(wrong, wordlist)).toBe(false)
      expect(checkRecoveryCode(wrong)._tag).toBe("Problem")
    }
  })
})

describe("generate and format", () => {
  it("12 canonical words that pass BIP39's checksum, fresh each time; Redacted hides them", () => {
    const seen = new Set<string>()
    for (let i = 0; i < 20; i++) {
      const code = generateRecoveryCode()
      const s = Redacted.value(code)
      expect(s).toMatch(/^[a-z]+( [a-z]+){11}$/)
      expect(validateMnemonic(s, wordlist)).toBe(true)
      expect(okOf(checkRecoveryCode(s))).toBe(s)
      expect(String(code)).not.toContain(s.split(" ")[0])
      expect(JSON.stringify({ code })).not.toContain(s.split(" ")[0])
      seen.add(s)
    }
    expect(seen.size).toBe(20)
  })

  it("formatForPaper: three numbered rows of four; what is copied back off it is the code", () => {
    const paper = formatForPaper(Redacted.make(LEGAL))
    expect(paper).toBe(
      [
        " 1. legal       2. winner      3. thank       4. year",
        " 5. wave        6. sausage     7. worth       8. useful",
        " 9. legal      10. winner     11. thank      12. yellow",
        ""
      ].join("\n")
    )
    const copied = paper.replace(/\d+\./g, " ")
    expect(okOf(checkRecoveryCode(copied))).toBe(LEGAL)
  })
})

describe("forgiving input", () => {
  it("any case, any whitespace, 4-letter (or longer) prefixes; 3-letter words are whole", () => {
    const zoo = VECTORS[3]![1]
    expect(okOf(checkRecoveryCode(LEGAL.toUpperCase()))).toBe(LEGAL)
    expect(okOf(checkRecoveryCode(`\n  ${LEGAL.split(" ").join(" \t\r\n ")}  \n`))).toBe(LEGAL)
    expect(okOf(checkRecoveryCode(LEGAL.split(" ").map((w) => w.slice(0, 4)).join(" ")))).toBe(LEGAL)
    expect(okOf(checkRecoveryCode("LEGA winn THAN year WAVE saus wort usef lega WINNER thank yell"))).toBe(LEGAL)
    expect(okOf(checkRecoveryCode("legal winne thank year wave sausag worth usefu legal winner thank yello"))).toBe(LEGAL)
    expect(okOf(checkRecoveryCode(zoo.toUpperCase()))).toBe(zoo)
    expect(okOf(checkRecoveryCode(zoo.replace("wrong", "wron")))).toBe(zoo)
  })

  it("wrong counts are refused with the count, no position", () => {
    const w = LEGAL.split(" ")
    for (const input of ["", "   \n", w.slice(0, 11).join(" "), [...w, "zoo"].join(" "), [...w, ...w].join(" ")]) {
      const r = problemOf(checkRecoveryCode(input))
      expect(r.position).toBeUndefined()
      expect(r.message).toMatch(/^a recovery code has 12 words; got \d+$/)
    }
    expect(problemOf(checkRecoveryCode("zoo ".repeat(500))).message).toContain("far too long")
    expect(RECOVERY_CODE_WORDS).toBe(12)
  })

  it("an unknown word is named by position: misspelt, too short a prefix, digits, a prefix going astray", () => {
    const w = LEGAL.split(" ")
    const at = (p: number, t: string) => checkRecoveryCode(w.map((x, i) => (i === p - 1 ? t : x)).join(" "))
    for (const [p, t] of [[7, "wroth"], [1, "leg4l"], [3, "tha"], [12, "yellowish"], [5, "wavx"], [2, "x".repeat(40)]] as const) {
      const r = problemOf(at(p, t))
      expect(r.position).toBe(p)
      expect(r.message).toBe(`word ${p} is not a recovery-code word`)
    }
    const two = problemOf(checkRecoveryCode(w.map((x, i) => (i === 2 || i === 8 ? "qqqq" : x)).join(" ")))
    expect(two).toMatchObject({ position: 3, candidates: [3, 9], message: "words 3 and 9 are not recovery-code words" })
  })

  it("a checksum failure from a valid wrong word names that word, or lists the words that could be it", () => {
    // "winner" → "dinner" (word 2): only word 2 has a one-letter correction that passes the checksum
    const named = problemOf(checkRecoveryCode(LEGAL.replace(/^legal winner/, "legal dinner")))
    expect(named).toMatchObject({ position: 2, message: "word 2 is probably wrong: the code's checksum fails" })
    expect(named.candidates).toBeUndefined()
    // "winner" → "inner" (word 2): words 5 and 10 also have one-letter corrections that pass
    const listed = problemOf(checkRecoveryCode(LEGAL.replace(/^legal winner/, "legal inner")))
    expect(listed).toMatchObject({ candidates: [2, 5, 10], message: "the code's checksum fails: one of words 2, 5 and 10 is likely wrong" })
    expect(listed.position).toBeUndefined()
    // "yellow" → "zoo" is no small typo: whatever is said, it names no word of the code
    problemOf(checkRecoveryCode(LEGAL.replace(/yellow$/, "zoo")))
  })
})

/** A single edit (distance 1) of `w`: substitute, insert, delete or swap adjacent letters. */
const typoArb = (w: string) =>
  FastCheck.tuple(FastCheck.integer({ min: 0, max: 3 }), FastCheck.nat({ max: w.length }), FastCheck.constantFrom(..."abcdefghijklmnopqrstuvwxyz"))
    .map(([op, at, ch]) => {
      const i = Math.min(at, w.length - 1)
      if (op === 0) return w.slice(0, i) + ch + w.slice(i + 1)
      if (op === 1) return w.slice(0, at) + ch + w.slice(at)
      if (op === 2) return w.slice(0, i) + w.slice(i + 1)
      return i + 1 < w.length ? w.slice(0, i) + w[i + 1] + w[i] + w.slice(i + 2) : w + ch
    })

/**
 * The typo is detected and its position is right: unknown word at p; or a checksum Problem naming
 * p (or listing p among the candidates, never naming another); or, when the typo is a valid word
 * passing the checksum, nearbyCodes offers the true code at p. A typo that is a prefix of the same
 * word reads as that word (harmless).
 */
const assertCaught = (code: string, p: number, typo: string) => {
  const words = code.split(" ")
  const typed = words.map((x, i) => (i === p ? typo : x)).join(" ")
  const r = checkRecoveryCode(typed)
  if (r._tag === "Ok") {
    const got = Redacted.value(r.canonical)
    if (got === code) return "same"
    expect(validateMnemonic(got, wordlist)).toBe(true)
    const near = nearbyCodes(typed)
    expect(near.some((n) => n.position === p + 1 && Redacted.value(n.code) === code), `nearbyCodes misses the true code for ${typo}`).toBe(true)
    return "nearby"
  }
  problemOf(r)
  if (r.position !== undefined) expect(r.position).toBe(p + 1)
  else expect(r.candidates).toContain(p + 1)
  return r.message.startsWith("word") && r.message.includes("not a") ? "unknown" : r.position !== undefined ? "named" : "listed"
}

const WORDSET = new Set(wordlist)
const LETTERS = "abcdefghijklmnopqrstuvwxyz"
/** Every string one edit from w (substitution, insertion, deletion, adjacent transposition). */
const edits1 = (w: string): Array<string> => {
  const out: Array<string> = []
  for (let i = 0; i <= w.length; i++) {
    for (const c of LETTERS) {
      out.push(w.slice(0, i) + c + w.slice(i))
      if (i < w.length) out.push(w.slice(0, i) + c + w.slice(i + 1))
    }
    if (i < w.length) out.push(w.slice(0, i) + w.slice(i + 1))
    if (i + 1 < w.length) out.push(w.slice(0, i) + w[i + 1] + w[i] + w.slice(i + 2))
  }
  return out
}

describe("typos are caught and located (property)", () => {
  const entropy = FastCheck.uint8Array({ minLength: 16, maxLength: 16 })

  it("any single-letter edit of any word of any code", () => {
    const outcomes: Record<string, number> = {}
    FastCheck.assert(
      FastCheck.property(
        entropy.chain((e) => {
          const code = entropyToMnemonic(e, wordlist)
          return FastCheck.nat({ max: 11 }).chain((p) => typoArb(code.split(" ")[p]!).map((t) => [code, p, t] as const))
        }).filter(([code, p, t]) => t !== code.split(" ")[p]),
        ([code, p, t]) => {
          const o = assertCaught(code, p, t)
          outcomes[o] = (outcomes[o] ?? 0) + 1
        }
      ),
      { ...PROP_SEED, numRuns: 300 }
    )
    expect(outcomes["unknown"]).toBeGreaterThan(200)
  })

  // Random edits rarely land on another valid word; these do on purpose, to exercise the checksum
  // search and nearbyCodes (the rare typo that passes the checksum).
  const neighbours = new Map<string, ReadonlyArray<string>>()
  const neighboursOf = (w: string) => {
    let n = neighbours.get(w)
    if (n === undefined) {
      n = [...new Set(edits1(w))].filter((x) => x !== w && WORDSET.has(x))
      neighbours.set(w, n)
    }
    return n
  }
  const withNeighbour = entropy
    .map((e) => {
      const code = entropyToMnemonic(e, wordlist)
      return { code, ps: code.split(" ").flatMap((w, i) => (neighboursOf(w).length > 0 ? [i] : [])) }
    })
    .filter(({ ps }) => ps.length > 0)
    .chain(({ code, ps }) =>
      FastCheck.constantFrom(...ps).chain((p) => FastCheck.constantFrom(...neighboursOf(code.split(" ")[p]!)).map((t) => [code, p, t] as const))
    )

  it("a word replaced by another valid word one edit away", () => {
    const outcomes: Record<string, number> = {}
    FastCheck.assert(
      FastCheck.property(withNeighbour, ([code, p, t]) => {
        const o = assertCaught(code, p, t)
        outcomes[o] = (outcomes[o] ?? 0) + 1
      }),
      { ...PROP_SEED, numRuns: 80 }
    )
    // every path is exercised: named exactly, listed among candidates, found only by nearbyCodes
    expect(outcomes["named"]).toBeGreaterThan(20)
    expect(outcomes["listed"]).toBeGreaterThan(10)
    expect(outcomes["nearby"]).toBeGreaterThan(0)
    expect((outcomes["named"] ?? 0) + (outcomes["listed"] ?? 0) + (outcomes["nearby"] ?? 0)).toBe(80)
  })

  it("nearbyCodes: one word changed, each code passes the checksum, nearest first, the true code among them", () => {
    // find a typo that passes the checksum: LEGAL with one word replaced by a valid neighbour
    const w = LEGAL.split(" ")
    let found: { p: number; typed: string } | undefined
    for (let p = 0; p < 12 && found === undefined; p++) {
      for (const n of neighboursOf(w[p]!)) {
        const typed = w.map((x, i) => (i === p ? n : x)).join(" ")
        if (validateMnemonic(typed, wordlist)) {
          found = { p, typed }
          break
        }
      }
    }
    expect(found).toBeDefined()
    const { p, typed } = found!
    expect(okOf(checkRecoveryCode(typed))).toBe(typed) // the checksum cannot tell: only the unwrap can
    const near = nearbyCodes(typed)
    expect(near.length).toBeGreaterThan(0)
    expect(near.length).toBeLessThan(200)
    expect(near.some((n) => n.position === p + 1 && Redacted.value(n.code) === LEGAL)).toBe(true)
    const tw = typed.split(" ")
    let lastD = 0
    for (const n of near) {
      const cw = Redacted.value(n.code).split(" ")
      expect(validateMnemonic(cw.join(" "), wordlist)).toBe(true)
      const diff = cw.flatMap((x, i) => (x === tw[i] ? [] : [i + 1]))
      expect(diff).toEqual([n.position])
      const d = Math.min(osa(tw[n.position - 1]!, cw[n.position - 1]!), ...Array.from({ length: Math.max(0, cw[n.position - 1]!.length - 3) }, (_, k) => osa(tw[n.position - 1]!, cw[n.position - 1]!.slice(0, k + 4))))
      expect(d).toBeLessThanOrEqual(2)
      expect(d).toBeGreaterThanOrEqual(lastD)
      lastD = d
    }
    // with one unknown word only that position varies; garbage gives nothing
    const unknownAt5 = w.map((x, i) => (i === 4 ? "wavx" : x)).join(" ")
    const fixes = nearbyCodes(unknownAt5)
    expect(fixes.every((n) => n.position === 5)).toBe(true)
    expect(fixes.some((n) => Redacted.value(n.code) === LEGAL)).toBe(true)
    expect(nearbyCodes("zoo zoo")).toEqual([])
    expect(nearbyCodes(w.map((x, i) => (i < 2 ? "qqqq" : x)).join(" "))).toEqual([])
  })
})
