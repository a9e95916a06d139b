/**
 * The few libc functions swapmoe calls through Deno's FFI: `open`, `close`, `lseek`, `mmap`, `munmap`,
 * `madvise` and `getpagesize`, plus errno access for error messages. The library is loaded lazily, on
 * the first call of {@link libc}, and once.
 *
 * Which library: the path in the `SWAPMOE_LIBC` environment variable when set (and readable without a
 * permission prompt), else the first of `libc.so.6`, `libc.so` and `/usr/lib/libSystem.B.dylib` that
 * loads. Calling it needs `--allow-ffi`.
 *
 * The constants below have the same values on Linux, macOS and FreeBSD, except `O_CLOEXEC`.
 *
 * @module
 */

import { SwapMoeError } from "../src/errors.ts";

/** The libc symbol table; each entry's comment is the C prototype it binds. */
export const LIBC_SYMBOLS = {
  /** `int open(const char *pathname, int flags, ...);` — called with the two fixed arguments only. */
  open: { parameters: ["buffer", "i32"], result: "i32" },
  /** `int close(int fd);` */
  close: { parameters: ["i32"], result: "i32" },
  /** `off_t lseek(int fd, off_t offset, int whence);` — `off_t` is 64-bit on the 64-bit targets. */
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  /** `void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset);` */
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  /** `int munmap(void *addr, size_t length);` */
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  /** `int madvise(void *addr, size_t length, int advice);` */
  madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
  /** `int getpagesize(void);` */
  getpagesize: { parameters: [], result: "i32" },
  /** `char *strerror(int errnum);` */
  strerror: { parameters: ["i32"], result: "pointer" },
  /** `int *__errno_location(void);` — glibc and musl. */
  __errno_location: { parameters: [], result: "pointer", optional: true },
  /** `int *__error(void);` — macOS and FreeBSD. */
  __error: { parameters: [], result: "pointer", optional: true },
} as const satisfies Deno.ForeignLibraryInterface;

/** The callable libc symbols. */
export type LibcSymbols = Deno.DynamicLibrary<typeof LIBC_SYMBOLS>["symbols"];

/** `open` flag: read only. */
export const O_RDONLY = 0;
/** `open` flag: close on exec (its value differs per OS; 0 where unknown). */
export const O_CLOEXEC: number = (() => {
  switch (Deno.build.os) {
    case "linux":
    case "android":
      return 0o2000000;
    case "darwin":
      return 0x1000000;
    case "freebsd":
      return 0x100000;
    default:
      return 0;
  }
})();
/** `lseek` whence: from the end of the file. */
export const SEEK_END = 2;
/** `mmap` protection: pages may be read. */
export const PROT_READ = 1;
/** `mmap` flag: private copy-on-write mapping. */
export const MAP_PRIVATE = 2;
/** `madvise` advice: no special treatment. */
export const MADV_NORMAL = 0;
/** `madvise` advice: expect sequential reads (aggressive read-ahead). */
export const MADV_SEQUENTIAL = 2;
/** `madvise` advice: the pages will be needed soon (start reading them in). */
export const MADV_WILLNEED = 3;
/** `madvise` advice: the pages are not needed for now (the kernel may drop them). */
export const MADV_DONTNEED = 4;

/** Returns whether `ptr` is `mmap`'s `MAP_FAILED` (`(void *) -1`) or null. */
export function isMapFailed(ptr: Deno.PointerValue): boolean {
  if (ptr === null) return true;
  const value = Deno.UnsafePointer.value(ptr);
  return value === 0xffff_ffff_ffff_ffffn || value === -1n;
}

/** The library names tried, in order, when `SWAPMOE_LIBC` is not set. */
export const LIBC_CANDIDATES: readonly string[] = Object.freeze([
  "libc.so.6",
  "libc.so",
  "/usr/lib/libSystem.B.dylib",
]);

let loaded: LibcSymbols | undefined;

function envOverride(): string | undefined {
  try {
    const state = Deno.permissions.querySync({ name: "env", variable: "SWAPMOE_LIBC" }).state;
    if (state !== "granted") return undefined;
    const value = Deno.env.get("SWAPMOE_LIBC");
    return value === undefined || value === "" ? undefined : value;
  } catch {
    return undefined;
  }
}

/**
 * Returns the libc symbols, loading the library on the first call.
 *
 * @throws {SwapMoeError} when FFI is not permitted or no candidate library loads; the message lists
 * every library tried and why it failed.
 */
export function libc(): LibcSymbols {
  if (loaded) return loaded;
  const override = envOverride();
  const candidates = override === undefined ? LIBC_CANDIDATES : [`SWAPMOE_LIBC=${override}`];
  const failures: string[] = [];
  let lastError: unknown;
  for (const name of candidates) {
    try {
      loaded = Deno.dlopen(override ?? name, LIBC_SYMBOLS).symbols;
      return loaded;
    } catch (error) {
      if (error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied) {
        throw new SwapMoeError(`Cannot load libc: FFI is not permitted, run with --allow-ffi`, {
          cause: error,
        });
      }
      lastError = error;
      failures.push(`${name} (${error instanceof Error ? error.message : String(error)})`);
    }
  }
  throw new SwapMoeError(`Cannot load libc: tried ${failures.join(", ")}`, { cause: lastError });
}

/** Returns the calling thread's `errno`, or `undefined` where it cannot be read. Best effort. */
export function errno(): number | undefined {
  const lib = libc();
  const location = lib.__errno_location?.() ?? lib.__error?.() ?? null;
  if (location === null) return undefined;
  return new Deno.UnsafePointerView(location).getInt32();
}

/** Describes the current `errno` for an error message, e.g. `errno 2, No such file or directory`. */
export function describeErrno(): string {
  const code = errno();
  if (code === undefined) return "errno unavailable";
  const text = libc().strerror(code);
  return text === null ? `errno ${code}` : `errno ${code}, ${Deno.UnsafePointerView.getCString(text)}`;
}
