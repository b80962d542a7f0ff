/**
 * s3rver (3.7) lists a "directory" under a prefix only when an object lies directly in it: with
 * `prefix=run/`, `delimiter=/` and the single object `run/step_1/save-x/model.pt`, real S3 answers
 * the common prefix `run/step_1/`, s3rver answers nothing (its walk skips directories below a
 * would-be common prefix before it sees their objects). Object storage as ckpt writes it has steps
 * that hold only a save directory (a save not yet committed), so the tests serve S3's answer: a
 * delimited listing is computed here from the server's own flat listing of the prefix.
 */

interface ListOptions {
  delimiter?: string;
  startAfter?: string;
  prefix?: string;
  maxKeys?: number;
}

interface ListResult {
  objects: { key: string }[];
  commonPrefixes: string[];
  isTruncated: boolean;
}

interface Store {
  listObjects(bucket: string, options: ListOptions): Promise<ListResult>;
}

export function fixDelimitedListing(store: Store): void {
  const flat = store.listObjects.bind(store);
  store.listObjects = async (bucket, options) => {
    const { delimiter = "", prefix = "", maxKeys = Infinity } = options;
    if (delimiter === "") return flat(bucket, options);
    const all = await flat(bucket, { ...options, delimiter: "", maxKeys: Infinity });
    const commonPrefixes = new Set<string>();
    const objects: ListResult["objects"] = [];
    for (const object of all.objects) {
      const at = object.key.slice(prefix.length).indexOf(delimiter);
      if (at !== -1) commonPrefixes.add(object.key.slice(0, prefix.length + at + delimiter.length));
      else objects.push(object);
    }
    return { objects: objects.slice(0, maxKeys), commonPrefixes: [...commonPrefixes].sort(), isTruncated: objects.length > maxKeys };
  };
}
