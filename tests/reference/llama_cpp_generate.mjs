// Greedy continuations by llama.cpp, through the prebuilt build that the npm
// package node-llama-cpp bundles (no compiler, no network).
//   LORA_NODE_LLAMA_DIR=DIR node llama_cpp_generate.mjs MODEL.gguf N [--lora ADAPTER.gguf] PROMPT...
// DIR holds node_modules/node-llama-cpp. Each PROMPT is tokenized with its
// special tokens (<|im_start|> ...); prints one JSON line per prompt: the new
// token ids (up to N, stopping at an end-of-generation token), their text, and
// the generation speed.
import {join} from "node:path";
import {pathToFileURL} from "node:url";

const dir = process.env.LORA_NODE_LLAMA_DIR;
const {getLlama} = await import(pathToFileURL(join(dir, "node_modules/node-llama-cpp/dist/index.js")).href);
let [model, n, ...rest] = process.argv.slice(2);
let lora;
if (rest[0] === "--lora") [, lora, ...rest] = rest;
const llama = await getLlama({gpu: false, build: "never", progressLogs: false, logLevel: "error"});
const m = await llama.loadModel({modelPath: model});
for (const prompt of rest) {
  const ctx = await m.createContext({contextSize: 256, batchSize: 256, threads: 1,
      lora: lora ? {adapters: [{filePath: lora, scale: 1}]} : undefined});
  const seq = ctx.getSequence();
  const out = [];
  const t0 = Date.now();
  for await (const t of seq.evaluate(m.tokenize(prompt, true), {temperature: 0})) {
    if (m.isEogToken(t)) break;
    out.push(t);
    if (out.length >= Number(n)) break;
  }
  const s = (Date.now() - t0) / 1000;
  console.log(JSON.stringify({tokens: out, text: m.detokenize(out), tokens_per_s: out.length / s}));
  await ctx.dispose();
}
