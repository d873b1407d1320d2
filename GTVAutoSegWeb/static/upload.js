// Sends the CT chosen in the page's file input to the GTVAutoSeg server as a plain HTTP POST
// (streamed; the server checks its size and reads it). The server reports progress and errors
// through the page's state, so the response needs no handling here.
document.addEventListener("change", (event) => {
  const input = event.target;
  if (!input || input.id !== "gtv-upload" || !input.files || !input.files.length) {
    return;
  }
  const file = input.files[0];
  input.value = ""; // choosing the same file again must upload it again
  fetch("gtvautoseg/upload?name=" + encodeURIComponent(file.name), { method: "POST", body: file })
    .catch((error) => console.warn("GTVAutoSeg upload:", error));
}, true);
