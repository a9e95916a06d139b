/**
 * Models by name from the Hugging Face hub: {@link resolveModel} turns `org/name[@revision]` (or a
 * local folder) into a local folder, downloading into the hub cache shared with huggingface_hub.
 *
 * @module
 */
export {
  type DownloadProgress,
  hubCacheDir,
  listCachedModels,
  pullModel,
  removeCachedModel,
  type ResolvedModel,
  resolveModel,
  type ResolveOptions,
} from "./resolve.ts";
export type { CachedModel, CachedSnapshot } from "./cache.ts";
export { type ModelRef, parseModelName } from "./names.ts";
export { type HubSettings, hubSettings } from "./settings.ts";
