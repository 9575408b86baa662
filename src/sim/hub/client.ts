/** The dev hub's API as an in-process HttpClient (see ../appClient.ts). */
export { layerAppHttpClient, makeAppHttpClient } from "../appClient.js"
