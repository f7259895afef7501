#!/usr/bin/env python3
"""Writes the small fixtures of tests/validate (committed; rerun to regenerate).

Tiny BERT-shaped checkpoints (headers with real shapes, zero weights), csv files
that each carry one data mistake, a tokenizer, layered files and an old run.
"""
import json, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))

def write(rel, data, mode="w"):
    path = os.path.join(HERE, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode) as f:
        f.write(data)

def safetensors(tensors, truncate=0):
    """tensors: list of (name, dtype, shape); zero data, little-endian f32."""
    header, offset = {}, 0
    for name, dtype, shape in tensors:
        n = 4
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + bytes(offset - truncate)

def config(**over):
    c = {"model_type": "bert", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
         "num_attention_heads": 2, "intermediate_size": 4, "hidden_act": "gelu",
         "max_position_embeddings": 16, "type_vocab_size": 2, "layer_norm_eps": 1e-12}
    c.update(over)
    return json.dumps(c, indent=2) + "\n"

# A one-layer BERT with hidden 8 and a feed-forward of 4, and no `value` projection.
NARROW = [
    ("embeddings.word_embeddings.weight", "F32", [10, 8]),
    ("embeddings.position_embeddings.weight", "F32", [16, 8]),
    ("encoder.layer.0.attention.self.query.weight", "F32", [8, 8]),
    ("encoder.layer.0.attention.self.key.weight", "F32", [8, 8]),
    ("encoder.layer.0.attention.output.dense.weight", "F32", [8, 8]),
    ("encoder.layer.0.intermediate.dense.weight", "F32", [4, 8]),
    ("encoder.layer.0.output.dense.weight", "F32", [8, 4]),
]

write("models/empty/.gitkeep", "")
write("models/config-only/config.json", config())
write("models/garbage/config.json", config())
write("models/garbage/model.safetensors", "this is not a safetensors file\n")
write("models/truncated/config.json", config())
write("models/truncated/model.safetensors", safetensors(NARROW, truncate=64), "wb")
write("models/narrow-ffn/config.json", config())
write("models/narrow-ffn/model.safetensors", safetensors(NARROW), "wb")
write("models/mismatched/config.json", config(vocab_size=30522, hidden_size=384, num_attention_heads=12))
write("models/mismatched/model.safetensors", safetensors(NARROW), "wb")
write("models/relu/config.json", config(hidden_act="relu"))
write("models/relu/model.safetensors", safetensors(NARROW), "wb")
write("models/bad-dropout/config.json", config(hidden_dropout_prob=1.5))
write("models/bad-dropout/model.safetensors", safetensors(NARROW), "wb")
write("models/odd-heads/config.json", config(num_attention_heads=3))
write("models/odd-heads/model.safetensors", safetensors(NARROW), "wb")

WORDS = ["good", "bad", "fine", "great", "awful", "okay", "love", "hate", "meh", "nice"]

def csv(rows, header="sentiment,confidence,text"):
    return header + "\n" + "".join(f"{label},0.9,{text}\n" for label, text in rows)

def sentences(n, seed=0):
    return [f"the {WORDS[(i + seed) % 10]} film number {i} was {WORDS[(3 * i + seed) % 10]}" for i in range(n)]

write("data/single-class.csv", csv([("positive", t) for t in sentences(40)]))
write("data/two-classes.csv", csv([(["negative", "positive"][i % 2], t) for i, t in enumerate(sentences(60))]))
write("data/three-classes.csv", csv([(["negative", "neutral", "positive"][i % 3], t) for i, t in enumerate(sentences(30, 1))]))
write("data/case-labels.csv", csv([(["positive", "Positive", "negative"][i % 3], t) for i, t in enumerate(sentences(60))]))
write("data/imbalanced.csv", csv([("negative", WORDS[i % 10] + str(i)) for i in range(200)]
                                   + [("positive", "yes" + str(i)) for i in range(10)]
                                   + [("neutral", "so" + str(i)) for i in range(10)]))
write("data/duplicates.csv", csv([(["negative", "neutral", "positive"][i % 3], sentences(10)[i % 10]) for i in range(300)]))
write("data/semicolon.csv", "sentiment;confidence;text\n" + "".join(f"positive;0.9;{t}\n" for t in sentences(20)))
write("data/empty.csv", "sentiment,confidence,text\n")
write("data/bad-row.csv", csv([("positive", t) for t in sentences(5)]) + "negative,0.5\n")
latin = csv([(["negative", "neutral", "positive"][i % 3], t) for i, t in enumerate(sentences(60))]).encode()
latin += "".join(f"positive,0.9,caf\xe9 number {i} was tr\xe8s bien\n" for i in range(30)).encode("latin-1")
write("data/latin1.csv", latin, "wb")

write("cycle-a.toml", "# Extends cycle-b.toml, which extends this file: a cycle.\nextends = [\"cycle-b.toml\"]\n")
write("cycle-b.toml", "extends = [\"cycle-a.toml\"]\n")
write("old-run/adapter_config.json", json.dumps({"peft_type": "LORA", "r": 8}) + "\n")

vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + ["the", "film", "was", "number"]
special = lambda t: {"id": vocab.index(t), "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                     "normalized": False, "special": True}
tok = {
    "version": "1.0", "truncation": None, "padding": None,
    "added_tokens": [special(t) for t in vocab[:5]],
    "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                   "strip_accents": None, "lowercase": True},
    "pre_tokenizer": {"type": "BertPreTokenizer"},
    "post_processor": {"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                 {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
        "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                           "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
    "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
    "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
              "max_input_chars_per_word": 100, "vocab": {t: i for i, t in enumerate(vocab)}},
}
write("tiny-tokenizer.json", json.dumps(tok, indent=1) + "\n")

# A clean three-class file for the broken-pipeline corpus: 300 distinct rows.
write("data/clean.csv", csv([(["negative", "neutral", "positive"][i % 3], t) for i, t in enumerate(sentences(300, 2))]))
# Texts that are numbers (a wrong text column), and one-word texts.
write("data/numeric.csv", csv([(["negative", "neutral", "positive"][i % 3], str(1000 + 7 * i)) for i in range(60)]))
write("data/short.csv", csv([(["negative", "neutral", "positive"][i % 3], WORDS[i % 10]) for i in range(60)]))

# Issue 19's validation holes.
# A header of one field: a text column and no label column.
write("data/text-only.csv", "text\n" + "".join(f"{t}\n" for t in sentences(60)))
# CRLF line endings (the tweets corpus has them): a clean file, and one whose line 17 has a field too many.
crlf_rows = csv([(["negative", "neutral", "positive"][i % 3], t) for i, t in enumerate(sentences(60, 3))])
write("data/crlf.csv", crlf_rows.replace("\n", "\r\n").encode(), "wb")
ragged = crlf_rows.split("\n")
ragged[16] = "negative,0.9,an extra,field"
write("data/crlf-ragged.csv", "\r\n".join(ragged).encode(), "wb")
# A file of one row: the validation split takes it.
write("data/one-row.csv", csv([("positive", sentences(1)[0])]))
# Model folders: a 0-byte weight file, a config.json of `{}`, and damaged tokenizer.json files.
FULL = NARROW + [("encoder.layer.0.attention.self.value.weight", "F32", [8, 8])]
write("models/empty-weights/config.json", config())
write("models/empty-weights/model.safetensors", b"", "wb")
write("models/empty-config/config.json", "{}\n")
write("models/empty-config/model.safetensors", safetensors(FULL), "wb")
rng = __import__("random").Random(19)
for name, tokenizer in [("bytes", bytes(rng.randrange(256) for _ in range(512))), ("braces", b"{}\n"), ("empty", b"")]:
    write(f"models/bad-tokenizer-{name}/config.json", config())
    write(f"models/bad-tokenizer-{name}/model.safetensors", safetensors(FULL), "wb")
    write(f"models/bad-tokenizer-{name}/tokenizer.json", tokenizer, "wb")
