;; hello: the smallest useful gk v1 plugin, hand-written in WebAssembly text.
;; Build: python scripts/build_wat.py  (assembles every examples/plugins/*/*.wat)
;;
;;   hello -> {"message": <config "greeting">}   (asks the host with gk.host_call)
;;   echo  -> the arguments, unchanged (copied: the host frees args and result apart)
(module
  (import "gk" "host_call" (func $host_call (param i32 i32 i32 i32) (result i64)))
  (import "gk" "log" (func $log (param i32 i32 i32)))
  (import "gk" "error" (func $error (param i32 i32)))
  (memory (export "memory") 1)
  ;; An arena allocator: bump on gk_malloc, count live blocks on gk_free, and start over
  ;; when none is live. Enough for a plugin that keeps no state between calls.
  (global $heap (mut i32) (i32.const 2048))
  (global $live (mut i32) (i32.const 0))

  (func $free (export "gk_free") (param $p i32)
    (global.set $live (i32.sub (global.get $live) (i32.const 1)))
    (if (i32.le_s (global.get $live) (i32.const 0))
      (then (global.set $live (i32.const 0)) (global.set $heap (i32.const 2048)))))

  (data (i32.const 16) "{\"name\":\"hello\",\"version\":\"1.0.0\",\"description\":\"Says hello (WAT)\",\"permissions\":[\"config\"]}")
  (data (i32.const 512) "hello")
  (data (i32.const 520) "echo")
  (data (i32.const 528) "config_get")
  (data (i32.const 544) "{\"key\":\"greeting\"}")
  (data (i32.const 576) "{\"message\":")
  (data (i32.const 600) "unknown function")
  (data (i32.const 620) "hello called")
  (data (i32.const 640) "{\"message\":null}")

  (func $malloc (export "gk_malloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $live (i32.add (global.get $live) (i32.const 1)))
    (global.set $heap (i32.add (global.get $heap) (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))
        (then (global.set $heap (local.get $p)) (return (i32.const 0))))))
    (local.get $p))

  (func $pack (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32)) (i64.extend_i32_u (local.get $n))))

  (func $is (param $p i32) (param $n i32) (param $lit i32) (param $litn i32) (result i32)
    (if (i32.ne (local.get $n) (local.get $litn)) (then (return (i32.const 0))))
    (loop $next
      (if (i32.eqz (local.get $n)) (then (return (i32.const 1))))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $next (i32.eq (i32.load8_u (i32.add (local.get $p) (local.get $n)))
                           (i32.load8_u (i32.add (local.get $lit) (local.get $n))))))
    (i32.const 0))

  (func (export "gk_register") (result i64)
    (call $pack (i32.const 16) (i32.const 92)))

  (func (export "gk_call") (param $fp i32) (param $fl i32) (param $ap i32) (param $al i32) (result i64)
    (local $r i64) (local $vp i32) (local $vn i32) (local $out i32)
    (if (call $is (local.get $fp) (local.get $fl) (i32.const 520) (i32.const 4))
      (then (local.set $out (call $malloc (local.get $al)))
            (memory.copy (local.get $out) (local.get $ap) (local.get $al))
            (return (call $pack (local.get $out) (local.get $al)))))
    (if (i32.eqz (call $is (local.get $fp) (local.get $fl) (i32.const 512) (i32.const 5)))
      (then (call $error (i32.const 600) (i32.const 16)) (return (i64.const 0))))
    (call $log (i32.const 0) (i32.const 620) (i32.const 12))
    ;; greeting = host config_get("greeting"), answered as {"value":<greeting>} (Go's
    ;; encoding: exactly that prefix and a closing brace), or 0 when refused
    (local.set $r (call $host_call (i32.const 528) (i32.const 10) (i32.const 544) (i32.const 18)))
    (local.set $vp (i32.wrap_i64 (i64.shr_u (local.get $r) (i64.const 32))))
    (local.set $vn (i32.wrap_i64 (local.get $r)))
    (if (i32.lt_u (local.get $vn) (i32.const 10))
      (then (return (call $pack (i32.const 640) (i32.const 16)))))
    ;; {"message": + <greeting> + }
    (local.set $vn (i32.sub (local.get $vn) (i32.const 10)))
    (local.set $out (call $malloc (i32.add (local.get $vn) (i32.const 12))))
    (memory.copy (local.get $out) (i32.const 576) (i32.const 11))
    (memory.copy (i32.add (local.get $out) (i32.const 11)) (i32.add (local.get $vp) (i32.const 9)) (local.get $vn))
    (i32.store8 (i32.add (i32.add (local.get $out) (i32.const 11)) (local.get $vn)) (i32.const 125))
    (call $free (local.get $vp))
    (call $pack (local.get $out) (i32.add (local.get $vn) (i32.const 12))))
)
