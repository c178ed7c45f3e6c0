/** OHIF viewer configuration for the imaging cloud. The viewer is served by the HTTPS
 * gateway, so DICOMweb lives on the same origin: no host names are baked in. */
const gatewayOrigin = window.location.origin;
// Opened from a patient's share link (云胶片): no login, the link's cookie authorises the
// one study it shows (the gateway sets both cookies; only this one is readable here).
const shareLinkMode = document.cookie.split('; ').includes('imgcloud_share_mode=1');

window.config = {
  name: 'imaging-cloud',
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  showErrorDetails: 'production',
  defaultDataSourceName: 'imaging-cloud',
  // Login through Keycloak (authorization code + PKCE); the viewer then sends its access
  // token with every DICOMweb request, and the gateway checks it.
  ...(shareLinkMode ? {} : { oidc: [
    {
      authority: gatewayOrigin + '/auth/realms/imaging-cloud',
      client_id: 'ohif-viewer',
      redirect_uri: '/callback',
      response_type: 'code',
      scope: 'openid',
      post_logout_redirect_uri: '/',
      automaticSilentRenew: true,
      revokeAccessTokenOnSignout: true,
    },
  ] }),
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'imaging-cloud',
      configuration: {
        friendlyName: 'Regional imaging cloud (central archive)',
        name: 'imaging-cloud',
        wadoUriRoot: gatewayOrigin + '/dicom-web',
        qidoRoot: gatewayOrigin + '/dicom-web',
        wadoRoot: gatewayOrigin + '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        dicomUploadEnabled: false,
        singlepart: 'pdf,video',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
