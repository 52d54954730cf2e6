// What the page knows, shared by its modules (and visible as window.difflab).

export const state = {
  models: [],
  samplers: [],
  spacings: [],
  mode: "txt2img",
  source: null,        // input image of an edit: {id, width, height, url, name}
  job: null,           // id of the job the stage follows
  events: null,        // its EventSource
  pollTimer: null,
  lastSeed: null,      // seed of the newest result (the ♻ button)
  dialog: null,        // what the recipe dialog shows: {url, name, recipe}
  maskPainted: false,
};
// For tests and the curious: counters of what the live view received.
export const stats = { progressEvents: 0, previews: 0, states: [] };
window.difflab = { state, stats };
