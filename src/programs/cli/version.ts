/** `version`: the agent's name and version, nothing else loaded. */
import { Console } from "effect"
import { VERSION } from "../../version.js"

export const version = (o: { readonly json: boolean }) =>
  Console.log(o.json ? JSON.stringify({ name: "felhom-agent", version: VERSION }) : `felhom-agent ${VERSION}`)
