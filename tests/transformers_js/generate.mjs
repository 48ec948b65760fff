// Loads an afinar ONNX export the way a web or Node app does with Transformers.js, chats once, prints JSON.
// Usage: node generate.mjs EXPORT_DIR DTYPE MAX_NEW_TOKENS REPETITION_PENALTY < messages.json
// (DTYPE: "fp32" → onnx/model.onnx, "q8" → onnx/model_quantized.onnx). Only local files: no Hub access.
import fs from "node:fs";
import path from "node:path";
import { AutoModelForCausalLM, AutoTokenizer, env } from "@huggingface/transformers";

const [folder, dtype, maxNewTokens, repetitionPenalty] = process.argv.slice(2);
const messages = JSON.parse(fs.readFileSync(0, "utf-8"));
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = path.dirname(path.resolve(folder)) + path.sep;
const id = path.basename(path.resolve(folder));

const tokenizer = await AutoTokenizer.from_pretrained(id);
const model = await AutoModelForCausalLM.from_pretrained(id, { dtype, device: "cpu" });
const inputs = tokenizer.apply_chat_template(messages, { add_generation_prompt: true, return_dict: true });
const promptIds = Array.from(inputs.input_ids.data, Number);
const output = await model.generate({
  ...inputs,
  max_new_tokens: Number(maxNewTokens),
  do_sample: false,
  repetition_penalty: Number(repetitionPenalty),
});
const ids = Array.from(output.data, Number).slice(promptIds.length);
let eos = model.generation_config.eos_token_id;
eos = Array.isArray(eos) ? eos : [eos];
const text = tokenizer.decode(ids, { skip_special_tokens: true });
console.log(JSON.stringify({ prompt_ids: promptIds, ids, eos, text, ended_with_eos: eos.includes(ids.at(-1)) }));
