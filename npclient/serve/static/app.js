// Shows a token's activation value while hovering it (the value is also in its title).
(function () {
  var info = document.getElementById("tokinfo");
  if (!info) return;
  document.addEventListener("mouseover", function (ev) {
    var t = ev.target;
    if (t && t.classList && t.classList.contains("tok")) {
      info.textContent = t.getAttribute("data-value");
      info.style.display = "block";
    }
  });
  document.addEventListener("mouseout", function (ev) {
    if (ev.target && ev.target.classList && ev.target.classList.contains("tok")) info.style.display = "none";
  });
})();
