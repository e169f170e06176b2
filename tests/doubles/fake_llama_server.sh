#!/bin/sh
# Test double of a llama-server build with loadable CPU variants (tests/integration/llama_server_test.ts).
# Like ggml, it loads the best CPU variant library found beside itself and says so; then it dies of SIGILL
# when $FAKE_LLAMA_CRASH names that variant ("icelake"), or that variant with repacking on
# ("sapphirerapids+repack"), as a real build dies on a CPU that cannot run the variant's instructions.
# Otherwise it answers /health and /completion (fake_llama_server.ts). $FAKE_LLAMA_DENO is the deno to use.
dir=$(dirname "$0")
variant=none
for v in sapphirerapids icelake haswell x64; do
  if [ -e "$dir/libggml-cpu-$v.so" ]; then variant=$v; break; fi
done
[ "$variant" = none ] && { echo "no CPU backend found" >&2; exit 1; }
echo "load_backend: loaded CPU backend from $dir/libggml-cpu-$variant.so" >&2
repack=1
for a in "$@"; do [ "$a" = "--no-repack" ] && repack=0; done
case " $FAKE_LLAMA_CRASH " in
  *" $variant "*) kill -ILL $$ ;;
  *" $variant+repack "*) [ "$repack" = 1 ] && kill -ILL $$ ;;
esac
exec "$FAKE_LLAMA_DENO" run --allow-net=127.0.0.1 --allow-read "$FAKE_LLAMA_SERVER_TS" "$@"
