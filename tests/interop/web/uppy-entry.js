// Bundled by esbuild (in the test) into one script for uppy.html.
import Uppy from '@uppy/core';
import Tus from '@uppy/tus';

window.Uppy = Uppy;
window.UppyTus = Tus;
