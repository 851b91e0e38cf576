#!/usr/bin/env bash
# Builds Easel.app: a release build with Metal, wrapped in an app bundle and signed.
# Run on a Mac with the Xcode command line tools (sips, iconutil, codesign, lipo).
#
# - Universal (arm64 + x86_64) when both Rust targets are installed
#   (`rustup target add aarch64-apple-darwin x86_64-apple-darwin`), else this Mac's own.
# - Signed with a Developer ID and the hardened runtime when EASEL_SIGN_IDENTITY is set
#   (e.g. "Developer ID Application: Ada Lovelace (TEAMID)"), ad hoc otherwise.
set -euo pipefail
cd "$(dirname "$0")"

# One minimum macOS for the compiler and the bundle.
minimum_macos=12.0
export MACOSX_DEPLOYMENT_TARGET=$minimum_macos

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
app=target/Easel.app
iconset=target/Easel.iconset

installed=$(rustup target list --installed 2>/dev/null || true)
if grep -q '^aarch64-apple-darwin$' <<<"$installed" && grep -q '^x86_64-apple-darwin$' <<<"$installed"; then
  echo "building a universal binary (arm64 + x86_64)"
  for target in aarch64-apple-darwin x86_64-apple-darwin; do
    cargo build --release --features metal --target "$target"
  done
  binary=target/easel-universal
  lipo -create -output "$binary" \
    target/aarch64-apple-darwin/release/easel target/x86_64-apple-darwin/release/easel
else
  echo "building for this Mac only (install both apple-darwin targets for a universal binary)"
  cargo build --release --features metal
  binary=target/release/easel
fi

rm -rf "$app" "$iconset"
mkdir -p "$app/Contents/MacOS" "$app/Contents/Resources" "$iconset"
cp "$binary" "$app/Contents/MacOS/easel"

# The icon set from the 1024 px source (assets/icon-1024.png; scripts/make_icon.py draws it).
for size in 16 32 128 256 512; do
  sips -z "$size" "$size" assets/icon-1024.png --out "$iconset/icon_${size}x${size}.png" >/dev/null
  double=$((size * 2))
  sips -z "$double" "$double" assets/icon-1024.png --out "$iconset/icon_${size}x${size}@2x.png" >/dev/null
done
iconutil -c icns "$iconset" -o "$app/Contents/Resources/Easel.icns"

cat > "$app/Contents/Info.plist" <<PLIST
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>CFBundleInfoDictionaryVersion</key><string>6.0</string>
  <key>CFBundleName</key><string>Easel</string>
  <key>CFBundleDisplayName</key><string>Easel</string>
  <key>CFBundleIdentifier</key><string>app.easel.Easel</string>
  <key>CFBundleExecutable</key><string>easel</string>
  <key>CFBundleIconFile</key><string>Easel</string>
  <key>CFBundlePackageType</key><string>APPL</string>
  <key>CFBundleVersion</key><string>${version}</string>
  <key>CFBundleShortVersionString</key><string>${version}</string>
  <key>LSMinimumSystemVersion</key><string>${minimum_macos}</string>
  <key>LSApplicationCategoryType</key><string>public.app-category.graphics-design</string>
  <key>NSHighResolutionCapable</key><true/>
  <key>NSHumanReadableCopyright</key><string>MIT OR Apache-2.0</string>
  <key>CFBundleDocumentTypes</key>
  <array>
    <dict>
      <key>CFBundleTypeName</key><string>PNG image</string>
      <key>CFBundleTypeRole</key><string>Editor</string>
      <key>LSHandlerRank</key><string>Alternate</string>
      <key>LSItemContentTypes</key><array><string>public.png</string></array>
    </dict>
    <dict>
      <key>CFBundleTypeName</key><string>JPEG image</string>
      <key>CFBundleTypeRole</key><string>Editor</string>
      <key>LSHandlerRank</key><string>Alternate</string>
      <key>LSItemContentTypes</key><array><string>public.jpeg</string></array>
    </dict>
  </array>
</dict>
</plist>
PLIST
plutil -lint "$app/Contents/Info.plist" >/dev/null

if [ -n "${EASEL_SIGN_IDENTITY:-}" ]; then
  codesign --force --options runtime --timestamp --sign "$EASEL_SIGN_IDENTITY" "$app"
  echo "signed with $EASEL_SIGN_IDENTITY and the hardened runtime; notarize with"
  echo "  xcrun notarytool submit $app.zip --keychain-profile PROFILE --wait"
else
  codesign --force --sign - "$app"
  echo "signed ad hoc (runs on this Mac; set EASEL_SIGN_IDENTITY to a Developer ID to distribute)"
fi
echo "built $app (macOS $minimum_macos or later)"
